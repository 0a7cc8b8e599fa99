"""Distillation losses for MicroCap (guide -> student).

total = CE(student, references) + alpha * kd_kl(...) + beta * attention_alignment(...)

kd_kl: Hinton-style soft-target loss, tau^2 * KL(p_guide^tau || p_student^tau) per non-pad token
       (the KL between the student's and the guide's temperature-softened next-token distributions,
       taken in the direction whose gradient is the soft-target cross-entropy).
attention_alignment: KL(a_guide || a_student) between the guide's cross-attention over frames
       (averaged over heads, layers and caption steps) and the student's temporal pooling weights.
Both are exactly zero when the two distributions are identical.
"""

import torch
import torch.nn.functional as F

EPS = 1e-8


def kd_kl(student_logits, guide_logits, mask, tau):
    """student_logits, guide_logits (B, L, V) (the guide's may be cached in fp16); mask (B, L) true
    on tokens that count -> scalar."""
    log_p_s = F.log_softmax(student_logits / tau, dim=-1)
    log_p_g = F.log_softmax(guide_logits.float() / tau, dim=-1)
    kl = (log_p_g.exp() * (log_p_g - log_p_s)).sum(-1)  # (B, L)
    m = mask.float()
    return (tau**2) * (kl * m).sum() / m.sum().clamp(min=1)


def attention_alignment(student_weights, guide_weights):
    """student_weights, guide_weights (B, T), each row sums to 1 -> mean KL(guide || student)."""
    g = guide_weights.clamp(min=EPS)
    s = student_weights.clamp(min=EPS)
    return (guide_weights * (torch.log(g) - torch.log(s))).sum(-1).mean()
