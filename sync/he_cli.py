"""``mammo bench he``: encrypt, serialise, aggregate and decrypt costs of an update, CKKS beside plaintext.

TenSEAL, numpy's heavy paths and torch are imported inside the handler, so
``mammo`` parses its arguments without them.
"""

from __future__ import annotations

import argparse
from typing import Any

from edge_agent.cliout import EXIT_OK, EXIT_USAGE, add_json_flag, emit


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], bench_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = bench_sub.add_parser("he", help="CKKS update costs (encrypt, serialise, aggregate 10/100, decrypt, bytes) for the trainable part and 1M values, beside plaintext")
    p.add_argument("--counts", default="10,100", help="numbers of updates aggregated, comma-separated (default 10,100)")
    p.add_argument("--large", type=int, default=1_000_000, help="values of the large update (0 skips it; default 1000000)")
    p.add_argument("--repeat", type=int, default=3, help="repeats of the timed encrypt/serialise of the small update (median)")
    add_json_flag(p)
    p.set_defaults(handler=cmd_bench_he)


def cmd_bench_he(args: argparse.Namespace) -> int:
    try:
        counts = tuple(int(c) for c in str(args.counts).split(",") if c.strip())
    except ValueError:
        counts = ()
    if not counts or min(counts) < 1 or args.large < 0 or args.repeat < 1:
        print("--counts needs positive integers (e.g. 10,100), --large >= 0, --repeat >= 1.")
        return EXIT_USAGE
    from sync.he_bench import run  # late: tenseal and torch only when the benchmark runs

    result = run(counts=counts, large=args.large, repeat=args.repeat)
    emit(args, result, _text(result, counts))
    return EXIT_OK


def _text(r: dict[str, Any], counts: tuple[int, ...]) -> str:
    lines = [f"CKKS N={r['he_params']['poly_modulus_degree']} {r['he_params']['coeff_mod_bit_sizes']}, {r['slots_per_ciphertext']} slots per ciphertext; "
             f"peer: {r['peer']}", f"trainable part from {r['trainable_source']}"]
    for name in ("trainable", "1m"):
        m = r.get(name)
        if not m:
            continue
        lines.append(f"\n{name}: {m['values']:,} values in {m['ciphertexts_per_update']} ciphertexts")
        lines.append(f"  bytes per update   plaintext {m['plaintext_update_bytes']:>12,}   CKKS {m['ckks_update_bytes']:>12,}   x{m['ckks_over_plaintext_update_bytes']}")
        lines.append(f"  encrypt {m['ckks_encrypt_s']:.3f} s   serialise {m['ckks_serialize_s']:.3f} s   decrypt {m['ckks_decrypt_s']:.3f} s")
        for n in counts:
            lines.append(f"  aggregate {n:>4}      plaintext {m[f'plaintext_aggregate_{n}_s']:>9.4f} s   CKKS {m[f'ckks_aggregate_{n}_s']:>9.3f} s   "
                         f"x{m[f'ckks_over_plaintext_aggregate_{n}']}   max error {m[f'max_abs_error_{n}']:.1e}")
        lines.append(f"  peak RSS so far {m['peak_rss_mb']:.0f} MB")
    lines.append(f"\ntrainable update within the {r['update_bytes_budget']:,}-byte budget: {r['trainable_within_budget']}")
    return "\n".join(lines)
