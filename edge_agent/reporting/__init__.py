"""Reporting out: screening reports to the national record, the family doctor's SMS, and the box's Prometheus metrics.

    report job (inference) ─► delivery.ReportHandler ─► FHIR transaction Bundle (fhir) ─► adapter (FHIR endpoint; e-Nabız: enabiz)
                                                    └─► notify job ─► sms.SmsHandler ─► HTTP SMS gateway
    metrics.BoxCollector ◄── GET /metrics (Prometheus) ; monitoring/ holds the fleet's Grafana dashboard and alert rules

facts.py reads the other components' tables into one frozen record; fhir.py and
the SMS text are pure functions of it; state.py owns ``reporting_deliveries``;
service.py wires the workers into ``mammo up``; cli.py adds ``mammo report``.
"""
