"""Draw the documentation's figures as small hand-written SVG files under docs/figures/.

    python scripts/make_figures.py            # rewrites docs/figures/*.svg (commit the result)
    python scripts/make_figures.py --out DIR  # somewhere else, e.g. to compare with the committed files

Three figures, each computed from minimoe itself so that a change in the code shows up as a changed figure:
  awq_word.svg         the nibble layout of one AWQ qweight word, decoded with minimoe.awq.unpack
  routing_heatmap.svg  router probabilities per token and expert in a tiny random checkpoint (8 experts, top-2)
  roofline_cpu.svg     a roofline for the int4 GEMV/GEMM on the 2-core development machine

Why SVG written by hand and not matplotlib: the files stay a few KB, are diffable text, come out byte-identical
on every run, and the docs build needs no plotting library. The price is this file's ~40 lines of SVG helpers.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from minimoe import awq  # noqa: E402

# ---------------------------------------------------------------------------------------------------------------
# Machine numbers for the roofline. Measured on the development machine (2 shared cores of an x86-64 Xeon with
# AVX-512 and AMX, torch 2.13 CPU, 2 threads) while minimoe was being built, and recorded in the project's
# environment notes; they are not produced by a script in this repository. docs/benchmarks.md repeats them.
# ---------------------------------------------------------------------------------------------------------------
CPU_READ_BANDWIDTH = 25e9          # bytes/s: sum over a 512 MB fp32 tensor gave ~23-26 GB/s
CPU_FP32_MATMUL = 265e9            # FLOP/s: torch.matmul 256x4096 @ 4096x14336 fp32, ~235-295 GFLOP/s
CPU_BF16_MATMUL = 1300e9           # FLOP/s: the same in bf16 (oneDNN on AMX)
MEASURED_FP32_GEMV_S = 8.8e-3      # s: 1x4096 @ 4096x14336 in fp32
MEASURED_NAIVE_AWQ_GEMV_S = 220e-3 # s: unpack to uint8 -> dequantize to fp32 -> matmul, same shape, M = 1

# The largest linear of Confinus-2x7B: an expert's w1 (or w3), K = hidden 4096 -> N = intermediate 14336.
K, N, G = 4096, 14336, 128


def int4_gemm_cost(m: int, k: int = K, n: int = N, group: int = G) -> tuple[float, float]:
    """(FLOPs, bytes) of y[m, n] = x[m, k] @ W^T for an AWQ int4 weight with fp16 activations."""
    flops = 2.0 * m * k * n
    weight_bytes = k * n / 2 + (k // group) * n * 2 + (k // group) * n / 2   # codes + fp16 scales + int4 zeros
    activation_bytes = 2.0 * m * (k + n)                                      # read x, write y, fp16
    return flops, weight_bytes + activation_bytes


# ---------------------------------------------------------------------------------------------------------------
# A minimal SVG writer: rectangles, lines, circles and text are all the figures need.
# ---------------------------------------------------------------------------------------------------------------
class Svg:
    def __init__(self, width: int, height: int):
        self.width, self.height = width, height
        self.items: list[str] = []

    def rect(self, x, y, w, h, fill="none", stroke="#333", stroke_width=1.0, extra=""):
        self.items.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" fill="{fill}" '
                          f'stroke="{stroke}" stroke-width="{stroke_width}"{extra}/>')

    def line(self, x1, y1, x2, y2, stroke="#333", width=1.0, dash=None):
        dashes = f' stroke-dasharray="{dash}"' if dash else ""
        self.items.append(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{stroke}" '
                          f'stroke-width="{width}"{dashes}/>')

    def circle(self, cx, cy, r, fill="#333", stroke="none"):
        self.items.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="{r:.1f}" fill="{fill}" stroke="{stroke}" '
                          f'stroke-width="1.5"/>')

    def text(self, x, y, s, size=12, anchor="middle", weight="normal", fill="#222", rotate=None, mono=False):
        s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        family = "monospace" if mono else "sans-serif"
        turn = f' transform="rotate({rotate} {x:.1f} {y:.1f})"' if rotate is not None else ""
        self.items.append(f'<text x="{x:.1f}" y="{y:.1f}" font-family="{family}" font-size="{size}" '
                          f'text-anchor="{anchor}" font-weight="{weight}" fill="{fill}"{turn}>{s}</text>')

    def write(self, path: str) -> None:
        head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.width}" height="{self.height}" '
                f'viewBox="0 0 {self.width} {self.height}">\n<rect width="100%" height="100%" fill="white"/>\n')
        with open(path, "w", encoding="utf-8") as f:
            f.write(head + "\n".join(self.items) + "\n</svg>\n")


def blend(t: float, low=(255, 255, 255), high=(31, 78, 160)) -> str:
    """A colour between `low` (t = 0) and `high` (t = 1)."""
    t = min(1.0, max(0.0, t))
    return "#" + "".join(f"{round(a + (b - a) * t):02x}" for a, b in zip(low, high))


# ---------------------------------------------------------------------------------------------------------------
# 1. One AWQ word
# ---------------------------------------------------------------------------------------------------------------
def awq_word_figure(path: str) -> None:
    word = 0x1F7A3C05                     # the worked example of docs/awq-format.md
    codes = awq.unpack(torch.tensor([[word]], dtype=torch.int32))[0].tolist()   # channel order 8c+0 .. 8c+7
    svg = Svg(800, 320)
    svg.text(400, 24, f"One qweight word 0x{word:08X}: nibble i holds output channel 8c + ORDER[i]",
             size=15, weight="bold")
    box_w, left, top = 90, 40, 58
    even, odd = "#dbe8fb", "#fde3c8"      # even channels live in the low 16 bits, odd ones in the high 16
    for slot in range(8):                 # slot 0 is drawn leftmost = nibble 7 (bits 31..28)
        nibble = 7 - slot
        channel = awq.ORDER[nibble]
        x = left + slot * box_w
        svg.text(x + box_w / 2, top - 8, f"bits {4 * nibble + 3}..{4 * nibble}", size=11, fill="#555")
        svg.rect(x, top, box_w, 56, fill=odd if channel % 2 else even)
        svg.text(x + box_w / 2, top + 20, f"nibble {nibble}", size=12)
        svg.text(x + box_w / 2, top + 44, f"0x{(word >> 4 * nibble) & 0xF:X} = {codes[channel]}", size=14,
                 weight="bold", mono=True)
        # The arrow down to the channel this nibble belongs to.
        target = left + channel * box_w + box_w / 2
        svg.line(x + box_w / 2, top + 56, target, 196, stroke="#777")
        svg.circle(target, 196, 3, fill="#777")
    for channel in range(8):
        x = left + channel * box_w
        svg.rect(x, 200, box_w, 50, fill=odd if channel % 2 else even)
        svg.text(x + box_w / 2, 220, f"channel 8c+{channel}", size=11)
        svg.text(x + box_w / 2, 242, f"q = {codes[channel]}", size=14, weight="bold", mono=True)
    svg.text(left, 275, "blue: even channels, in the low 16 bits", size=12, anchor="start", fill="#444")
    svg.text(left + 360, 275, "orange: odd channels, in the high 16 bits", size=12, anchor="start", fill="#444")
    svg.text(left, 300, "read: code of channel 8c+j = (word >> 4*REVERSE[j]) & 0xF,  REVERSE = [0,4,1,5,2,6,3,7]",
             size=12, anchor="start", fill="#444", mono=True)
    svg.write(path)


# ---------------------------------------------------------------------------------------------------------------
# 2. Routing heatmap from a tiny checkpoint
# ---------------------------------------------------------------------------------------------------------------
def routing_heatmap_figure(path: str) -> None:
    from minimoe.loading import load_model
    from minimoe.testing import make_tiny_checkpoint

    text = "the cat sat on the mat."
    with tempfile.TemporaryDirectory() as folder:
        make_tiny_checkpoint(folder, num_local_experts=8, num_experts_per_tok=2, seed=0)
        model = load_model(folder, dtype=torch.float32)
    ids = torch.tensor([list(text.encode())])          # the tiny vocabulary has 256 ids: one per byte
    _, routes = model(ids, output_router_logits=True)

    cell, left, top, gap = 22, 70, 60, 46
    experts = routes[0].logits.shape[1]
    svg = Svg(left + len(text) * cell + 30, top + len(routes) * (experts * cell + gap) + 40)
    svg.text(svg.width / 2, 22, "Router probabilities, tiny random Mixtral (8 experts, top-2)", size=15,
             weight="bold")
    svg.text(svg.width / 2, 40, "colour: softmax over experts; dot: one of the 2 experts the token is sent to",
             size=12, fill="#444")
    svg.text(svg.width / 2, svg.height - 12, "random weights: the pattern shows the mechanism, not language",
             size=11, fill="#666")
    for layer, route in enumerate(routes):
        probs = torch.softmax(route.logits.float(), dim=-1)    # (tokens, E)
        y0 = top + layer * (experts * cell + gap) + 16
        svg.text(left - 8, y0 - 6, f"layer {layer}", size=12, anchor="end", weight="bold")
        for e in range(experts):
            svg.text(left - 8, y0 + e * cell + cell * 0.7, f"expert {e}", size=11, anchor="end")
            for t in range(len(text)):
                p = float(probs[t, e])
                svg.rect(left + t * cell, y0 + e * cell, cell, cell, fill=blend(p / 0.6), stroke="#fff")
                if e in route.experts[t].tolist():
                    svg.circle(left + t * cell + cell / 2, y0 + e * cell + cell / 2, 3.5,
                               fill="#fff" if p > 0.3 else "#222")
        for t, ch in enumerate(text):
            svg.text(left + t * cell + cell / 2, y0 + experts * cell + 14, repr(ch)[1:-1], size=12, mono=True)
    svg.write(path)


# ---------------------------------------------------------------------------------------------------------------
# 3. CPU roofline
# ---------------------------------------------------------------------------------------------------------------
def roofline_figure(path: str) -> None:
    left, top, width, height = 80, 50, 560, 360
    x_lo, x_hi, y_lo, y_hi = -1.0, 3.0, -1.0, 3.5             # log10 of FLOP/byte and of GFLOP/s
    svg = Svg(left + width + 200, top + height + 70)

    def px(intensity):
        return left + (math.log10(intensity) - x_lo) / (x_hi - x_lo) * width

    def py(gflops):
        return top + height - (math.log10(gflops) - y_lo) / (y_hi - y_lo) * height

    svg.text((left + width) / 2 + 40, 24, "Roofline of the int4 GEMM at Confinus' expert shape (4096 -> 14336), "
             "2-core CPU", size=14, weight="bold")
    svg.rect(left, top, width, height, stroke="#999")
    for power in range(int(x_lo), int(x_hi) + 1):
        x = px(10.0 ** power)
        svg.line(x, top, x, top + height, stroke="#e5e5e5")
        svg.text(x, top + height + 18, f"{10.0 ** power:g}", size=11)
    for power in range(int(y_lo), int(math.floor(y_hi)) + 1):
        y = py(10.0 ** power)
        svg.line(left, y, left + width, y, stroke="#e5e5e5")
        svg.text(left - 8, y + 4, f"{10.0 ** power:g}", size=11, anchor="end")
    svg.text(left + width / 2, top + height + 40, "arithmetic intensity (FLOP per byte read)", size=12)
    svg.text(22, top + height / 2, "GFLOP/s", size=12, rotate=-90)

    bandwidth = CPU_READ_BANDWIDTH / 1e9
    for peak, label, colour in ((CPU_FP32_MATMUL / 1e9, "fp32 matmul", "#888"),
                                (CPU_BF16_MATMUL / 1e9, "bf16 matmul (AMX)", "#1f4ea0")):
        ridge = peak / bandwidth
        svg.line(px(10 ** x_lo), py(bandwidth * 10 ** x_lo), px(ridge), py(peak), stroke="#c0392b", width=2)
        svg.line(px(ridge), py(peak), px(10 ** x_hi), py(peak), stroke=colour, width=2)
        svg.text(px(10 ** x_hi) - 4, py(peak) + 15, f"{label} {peak:.0f} GFLOP/s", size=11, anchor="end",
                 fill=colour)
    svg.text(px(0.5), py(bandwidth * 0.5) - 10, f"{bandwidth:.0f} GB/s", size=11, fill="#c0392b", rotate=-30)

    # Where the int4 GEMM sits for M tokens (filled: the roofline's bound, an estimate).
    for m in (1, 8, 64, 256):
        flops, nbytes = int4_gemm_cost(m)
        intensity = flops / nbytes
        bound = min(bandwidth * intensity, CPU_BF16_MATMUL / 1e9)
        svg.circle(px(intensity), py(bound), 5, fill="#c0392b")
        above = m >= 64   # on the flat roof: label above the point, not on the line
        svg.text(px(intensity), py(bound) - 10 if above else py(bound) + 16, f"int4 M={m}", size=11,
                 anchor="middle" if above else "start")
    # Measured points (hollow): what plain PyTorch achieved at M = 1.
    flops, _ = int4_gemm_cost(1)
    for seconds, intensity, label in ((MEASURED_FP32_GEMV_S, 2 / 4, "fp32 GEMV (measured)"),
                                      (MEASURED_NAIVE_AWQ_GEMV_S, flops / int4_gemm_cost(1)[1],
                                       "naive dequant+matmul (measured)")):
        achieved = flops / seconds / 1e9
        svg.circle(px(intensity), py(achieved), 5, fill="white", stroke="#222")
        svg.text(px(intensity) + 8, py(achieved) + 4, label, size=11, anchor="start")

    legend_x = left + width + 14
    notes = ["red line: memory roof,", "GFLOP/s = GB/s x FLOP/byte", "", "filled: the roof's bound for",
             "int4 GEMM at M tokens", "(an estimate, not a timing)", "", "hollow: measured on the dev",
             "machine in plain PyTorch", "", "ceilings: measured on the", "dev machine (2 threads);",
             "see docs/benchmarks.md"]
    for i, note in enumerate(notes):
        svg.text(legend_x, top + 14 + 16 * i, note, size=11, anchor="start", fill="#444")
    svg.write(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "figures"), help="output folder")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)  # results must not depend on how the work is split
    for name, draw in (("awq_word.svg", awq_word_figure), ("routing_heatmap.svg", routing_heatmap_figure),
                       ("roofline_cpu.svg", roofline_figure)):
        target = os.path.join(args.out, name)
        draw(target)
        print(f"wrote {os.path.relpath(target)} ({os.path.getsize(target) / 1024:.1f} KB)")


if __name__ == "__main__":
    main()
