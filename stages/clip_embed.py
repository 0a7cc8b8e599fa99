"""clip_embed: CLIP embeddings of every sampled frame and every caption.

Reads params `clip.grid` and `clip.embed_batch_size`; reads data/clip/, data/frames/frames.h5 and
data/videos/annotations.json; writes data/embeddings/clip.h5 (frame_emb [V,T,D], optional grid_emb
[V,T,G,D], text_emb [C,D], caption, caption_video, video_id, split, and action / order_dependent when the
annotations have them).
"""

from tinycap import clip, params, stage


def main():
    p = params.load()
    cfg = params.section(p, "clip", clip.ClipParams)
    clip.embed("data/clip", "data/frames/frames.h5", "data/videos/annotations.json", "data/embeddings/clip.h5",
               grid=cfg.grid, batch_size=cfg.embed_batch_size)  # fmt: skip


if __name__ == "__main__":
    stage.run(main)
