"""clip_embed: CLIP embeddings of every sampled frame and every caption.

Reads params `clip.grid`, `clip.embed_batch_size`, `compute.engine` and `compute.workers`; reads data/clip/, data/frames/frames.h5 and
data/videos/annotations.json; writes data/embeddings/clip.h5 (frame_emb [V,T,D], optional grid_emb
[V,T,G,D], text_emb [C,D], caption, caption_video, video_id, split, and action / order_dependent when the
annotations have them). An interrupted run resumes from data/.resume/clip_embed/ (embedded chunks).
"""

from tinycap import clip, compute, params, stage


def main():
    p = params.load()
    cfg = params.section(p, "clip", clip.ClipParams)
    run = params.section(p, "compute", compute.ComputeParams)
    clip.embed("data/clip", "data/frames/frames.h5", "data/videos/annotations.json", "data/embeddings/clip.h5",
               grid=cfg.grid, batch_size=cfg.embed_batch_size, engine=run.engine, workers=run.workers,
               resume_dir="data/.resume/clip_embed")  # fmt: skip


if __name__ == "__main__":
    stage.run(main)
