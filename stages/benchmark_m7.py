"""benchmark_m7: caption the test/novel clips on the emulated Cortex-M7 (QEMU mps2-an500), count
instructions exactly, model cycles / latency / energy, read flash and RAM -> metrics/m7.json and
metrics/plots/m7_ops.json (instructions per caption by kernel, for `dvc plots`)."""

import logging
import tempfile

from tinycap import m7, params
from tinycap.errors import TinyCapError
from tinycap.io import write_json
from tinycap import stage

log = logging.getLogger("benchmark_m7")


def main():
    p = params.section(params.load(), "m7", m7.M7Params)
    with tempfile.TemporaryDirectory(prefix="benchmark_m7.") as work:
        metrics, op_rows = m7.benchmark("data/firmware", "data/int8", "data/embeddings/clip.h5", "data/guide/vocab.json",
                                        p, work)
    write_json("metrics/m7.json", metrics)
    write_json("metrics/plots/m7_ops.json", op_rows)
    log.info("%.0f instructions / caption (%s), %.2f ms at %d Hz (modelled), flash %d B, RAM %d B, %d parity mismatches",
             metrics["instructions"]["value"], metrics["instructions"]["method"], metrics["latency_ms"]["value"],
             p.clock_hz, metrics["flash_bytes"]["value"], metrics["ram_bytes"]["value"], metrics["parity_mismatches"])
    if metrics["parity_mismatches"]:  # the emulated firmware must caption exactly as TFLM and the host build
        raise TinyCapError("metrics/m7.json", f"{metrics['parity_mismatches']} clips captioned differently under QEMU: see 'parity'")


if __name__ == "__main__":
    stage.run(main)
