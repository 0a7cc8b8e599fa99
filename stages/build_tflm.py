"""build_tflm: the whole device path as firmware (C runtime + generated encoder and MicroCap), host parity with TFLM.

Reads params `firmware:`; reads data/int8 (graphs, quant.json, device_tflm.npz: the TFLM reference of the
device path), data/encoder/encoder_int8.tflite, data/frames/frames.h5 (parity clips, camera frames) and
data/guide/vocab.json; writes data/firmware/ (gen/ C sources, host/tc_host, tflm_app/ exported TFLM
application, elf/ Cortex-M7 images) and metrics/firmware.json.
"""

from tinycap import firmware, params, stage
from tinycap.io import atomic_path, write_json


def main():
    cfg = params.section(params.load(), "firmware", firmware.FirmwareParams)
    with atomic_path("data/firmware") as tmp:
        metrics = firmware.build(
            "data/int8",
            "data/guide/vocab.json",
            "data/encoder/encoder_int8.tflite",
            "data/frames/frames.h5",
            "data/int8/device_tflm.npz",
            tmp,
            cfg,
        )
    write_json("metrics/firmware.json", metrics)


if __name__ == "__main__":
    stage.run(main)
