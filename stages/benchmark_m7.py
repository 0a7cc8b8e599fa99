"""benchmark_m7: caption the test/novel clips on the emulated Cortex-M7 (QEMU mps2-an500) from their camera
frames (the whole device path: int8 encoder per frame, pooler, decoder), count instructions exactly, model
cycles (llvm-mca + flash wait states) / latency / energy, read flash and RAM -> metrics/m7.json and
metrics/plots/m7_ops.json (instructions per caption by kernel, for `dvc plots`). Written only when the M7
build's tokens and logits equal the TFLM reference of the device path (data/int8/device_tflm.npz);
otherwise one line and nothing written."""

import logging
import tempfile

from tinycap import m7, params, stage
from tinycap.io import write_json

log = logging.getLogger("benchmark_m7")


def main():
    p = params.section(params.load(), "m7", m7.M7Params)
    with tempfile.TemporaryDirectory(prefix="benchmark_m7.") as work:
        metrics, op_rows = m7.benchmark(
            "data/firmware",
            "data/int8",
            "data/encoder/encoder_int8.tflite",
            "data/frames/frames.h5",
            "data/int8/device_tflm.npz",
            "data/guide/vocab.json",
            p,
            work,
        )
    m7.check_parity(metrics)  # the emulated firmware must caption exactly as TFLM
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
