"""The report's variant-over-variant table: every two members of a model timed side by side."""

from __future__ import annotations

from qbench.report.blocks import Block, Heading, Para, Table


def pairs_blocks(pairs: list[dict]) -> list[Block]:
    """One line per two members at a batch size, the faster over the slower, with the
    interval of their own measured pair; nothing when the job timed nothing side by side."""
    rows = []
    for p in sorted(pairs, key=lambda p: (p["model_id"], p["device"], p["batch_size"],
                                          p["mode"], p["over_mode"])):
        s, lo, hi = p.get("speedup"), p.get("speedup_ci_low"), p.get("speedup_ci_high")
        if p.get("status") != "ok" or not (s and lo and hi):
            continue
        if s < 1.0 or (s == 1.0 and p["mode"] > p["over_mode"]):
            continue  # each two once: the faster over the slower
        apart = "✓" if lo > 1.0 else "✗"
        rows.append([p["model_id"], p["device"], str(p["batch_size"]), p["mode"],
                     p["over_mode"], f"{s:.2f}x [{lo:.2f}–{hi:.2f}]", apart, str(p["pairs"])])
    if not rows:
        return []
    return [Heading("Variant over variant (timed side by side)"),
            Table(["model", "device", "batch", "faster", "than", "speedup [95% CI]",
                   "told apart", "pairs"], rows, align_right={2, 5, 7}),
            Para("All of a model's variants and its reference were timed round-robin in one "
                 "process, so every two of them are a measured pair: told apart ✓ when the "
                 "interval lies wholly above 1.")]
