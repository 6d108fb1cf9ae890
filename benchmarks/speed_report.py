"""JSON results of train_throughput.py and decode_speed.py -> one markdown section for benchmarks/README.md.

    python -m benchmarks.speed_report OUT/train-*.json OUT/decode-*.json > OUT/speed.md
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path


def train_table(report: dict, name: str) -> list[str]:
    settings, model = report["settings"], report["model"]["config"]
    peaks = report.get("matmul_peak_tflops_by_dtype", {settings["dtype"]: report["matmul_peak_tflops"]})
    lines = [
        f"**{name}**: d {model['d_model']}, {model['num_encoder_layers']}+{model['num_decoder_layers']} layers, "
        f"FFN {model['d_ff']}, V {model['tgt_vocab_size']}, {report['model']['parameters'] / 1e6:.1f}M parameters; "
        f"batch {settings['batch']} x {settings['src_len']}/{settings['tgt_len']}, {settings['dtype']}, "
        f"attention {settings.get('attention', 'math')}, precision {settings.get('precision') or '-'}; "
        f"{report['flops']['training_per_step'] / 1e9:.1f} GFLOP/step. Matmul peaks (TFLOP/s): "
        + ", ".join(f"{dtype} {', '.join(f'{fw} {v:.1f}' for fw, v in p.items())}" for dtype, p in peaks.items()),
        "",
        "| stack | step ms | tokens/s | TFLOP/s | vs ref | " + " | ".join(f"MFU vs {d} peak" for d in peaks) + " |",
        "|---|---:|---:|---:|---:|" + "---:|" * len(peaks),
    ]
    for stack, r in report["results"].items():
        mfu = r.get("mfu", {settings["dtype"]: r["vs_matmul_peak"]})
        vs_ref = f"{r['vs_reference']:.2f}x" if "vs_reference" in r else "-"
        lines.append(f"| {stack} | {r['median_step_s'] * 1e3:.1f} | {r['tokens_per_s']:.0f} | {r['model_tflops']:.2f} | "
                     f"{vs_ref} | " + " | ".join(f"{mfu.get(d, float('nan')):.1%}" for d in peaks) + " |")
    return lines + [""]


def decode_table(report: dict, name: str) -> list[str]:
    args = report["args"]
    lines = [
        f"**{name}**: beam {args['beam']}, batch {args['batch_size']}, device {args['device']}, "
        f"{'checkpoint ' + args['checkpoint'] if args['checkpoint'] != 'None' else 'random weights, steps capped at ' + args['len_a'] + ' * S + ' + args['len_b']}",
        "",
        "| stack | mode | sentences | seconds | sentences/s | cached speed-up | tokens identical |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in report["results"].values():
        lines.append(f"| {r['stack']} | {r['mode']} | {r['sentences']} | {r['seconds']:.2f} | {r['sentences_per_s']:.1f} | "
                     f"{str(r['speedup']) + 'x' if 'speedup' in r else ''} | {r.get('identical', '')} |")
    return lines + [""]


def main(argv: Sequence[str] | None = None) -> int:
    paths = [Path(p) for p in (sys.argv[1:] if argv is None else argv)]
    lines = []
    for path in paths:
        try:
            report = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            lines += [f"**{path.stem}**: no result ({error})", ""]
            continue
        lines += decode_table(report, path.stem) if "args" in report else train_table(report, path.stem)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
