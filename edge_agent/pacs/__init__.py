"""The radiologist's link: referred studies to the hospital PACS (with the AI result as SR and heatmaps), and the modality worklist."""
