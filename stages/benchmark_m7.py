"""benchmark_m7: caption the test/novel clips on the emulated Cortex-M7 (QEMU mps2-an500), count
instructions exactly, model cycles / latency / energy, read flash and RAM -> metrics/m7.json and
metrics/plots/m7_ops.json (instructions per caption by kernel, for `dvc plots`). Written only when the
M7 build's tokens and logits equal TFLM's and the host build's; otherwise one line and nothing written."""

import logging
import tempfile

from tinycap import m7, params, stage
from tinycap.io import write_json

log = logging.getLogger("benchmark_m7")


def main():
    p = params.section(params.load(), "m7", m7.M7Params)
    with tempfile.TemporaryDirectory(prefix="benchmark_m7.") as work:
        metrics, op_rows = m7.benchmark("data/firmware", "data/int8", "data/embeddings/clip.h5", "data/guide/vocab.json", p, work)
    m7.check_parity(metrics)  # the emulated firmware must caption exactly as TFLM and the host build
    write_json("metrics/m7.json", metrics)
    write_json("metrics/plots/m7_ops.json", op_rows)
    log.info(
        "%.0f instructions / caption (%s), %.2f ms at %d Hz (modelled), flash %d B, RAM %d B, %d parity mismatches",
        metrics["instructions"]["value"],
        metrics["instructions"]["method"],
        metrics["latency_ms"]["value"],
        p.clock_hz,
        metrics["flash_bytes"]["value"],
        metrics["ram_bytes"]["value"],
        metrics["parity_mismatches"],
    )


if __name__ == "__main__":
    stage.run(main)
