"""pool: temporal pooling of the frame embeddings (`pooling: mean | attention`).

Reads params `seed`, `pooling` and `pool:`; reads data/embeddings/clip.h5; writes data/pooled/ (pooled.h5 with
video_emb [V,D] and weights [V,T]; pooler.pt), metrics/pool.json (retrieval on val/test, per action category,
and the mean-pooling baseline) and training curves in dvclive/pool.
"""

from tinycap import params, pool, stage
from tinycap.io import write_json


def main():
    p = params.load()
    cfg = params.section(p, "pool", pool.PoolParams)
    metrics = pool.run("data/embeddings/clip.h5", "data/pooled", p["pooling"], cfg,
                       seed=p["seed"], live_dir="dvclive/pool")  # fmt: skip
    write_json("metrics/pool.json", metrics)


if __name__ == "__main__":
    stage.run(main)
