"""build_tflm: the int8 MicroCap as firmware (C runtime + generated model), host parity with TFLM.

Reads params `firmware:`; reads data/int8 (graphs + quant.json), data/guide/vocab.json and
data/embeddings/clip.h5 (parity clips); writes data/firmware/ (gen/ C sources, host/tc_host,
tflm_app/ exported TFLM application, elf/ Cortex-M7 images) and metrics/firmware.json.
"""

from tinycap import firmware, params, stage
from tinycap.io import atomic_path, write_json


def main():
    cfg = params.section(params.load(), "firmware", firmware.FirmwareParams)
    with atomic_path("data/firmware") as tmp:
        metrics = firmware.build("data/int8", "data/guide/vocab.json", "data/embeddings/clip.h5", tmp, cfg)
    write_json("metrics/firmware.json", metrics)


if __name__ == "__main__":
    stage.run(main)
