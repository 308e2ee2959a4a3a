"""Each distillation loss against a plain, loop-by-loop statement of its formula."""

import math

import pytest
import torch

from lmcompress.distillation import losses
from lmcompress.models.outputs import mean_pool

torch.manual_seed(0)


def _naive_kl(p, q):  # KL(p || q) for 1-D probability vectors
    return sum(float(pi) * (math.log(float(pi)) - math.log(float(qi))) for pi, qi in zip(p, q))


def test_kd_loss_sequence_level_matches_formula():
    s, t, T = torch.randn(3, 4), torch.randn(3, 4), 2.0
    expected = sum(_naive_kl(torch.softmax(t[i] / T, -1), torch.softmax(s[i] / T, -1)) for i in range(3)) / 3 * T**2
    assert losses.kd_loss(s, t, T) == pytest.approx(expected, rel=1e-5)
    # soft CE = KL + teacher entropy (same gradient, different value)
    entropy = sum(-float((p * p.log()).sum()) for p in torch.softmax(t / T, -1)) / 3 * T**2
    assert losses.kd_loss(s, t, T, kind="ce") == pytest.approx(expected + entropy, rel=1e-5)


def test_kd_loss_token_level_ignores_padding():
    s, t = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    kept = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    expected = sum(_naive_kl(torch.softmax(t[b, i], -1), torch.softmax(s[b, i], -1)) for b, i in kept) / len(kept)
    assert losses.kd_loss(s, t, 1.0, mask) == pytest.approx(expected, rel=1e-5)
    s2 = s.clone()
    s2[0, 4] += 100.0  # a padded position changes nothing
    assert losses.kd_loss(s2, t, 1.0, mask) == pytest.approx(expected, rel=1e-5)


def test_span_kd_is_kl_over_real_positions_for_start_and_end():
    s, t, T = torch.randn(2, 6, 2), torch.randn(2, 6, 2), 2.0
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    expected = 0.0
    for b, length in ((0, 4), (1, 6)):
        for which in (0, 1):  # start, end: a distribution over the real positions only
            expected += _naive_kl(torch.softmax(t[b, :length, which] / T, -1),
                                  torch.softmax(s[b, :length, which] / T, -1))
    expected = expected / 4 * T**2
    assert losses.span_kd_loss(s, t, mask, T) == pytest.approx(expected, rel=1e-5)
    s2, t2 = s.clone(), t.clone()
    s2[0, 5] += 100.0  # padding takes no probability on either side
    t2[0, 4] -= 50.0
    assert losses.span_kd_loss(s2, t2, mask, T) == pytest.approx(expected, rel=1e-5)
    assert torch.isfinite(losses.span_kd_loss(s, t, torch.zeros_like(mask), T))


def test_kd_loss_zero_when_identical_and_all_masked_guard():
    x = torch.randn(2, 3, 5, requires_grad=True)
    assert losses.kd_loss(x, x.detach(), 4.0).item() == pytest.approx(0.0, abs=1e-6)
    zero = losses.kd_loss(x, torch.randn(2, 3, 5), 1.0, torch.zeros(2, 3))
    assert zero.item() == 0.0 and not torch.isnan(zero)
    zero.backward()  # the guard keeps the graph
    assert x.grad is not None


def test_kd_loss_is_fp32_under_bf16_inputs():
    s, t = torch.randn(4, 10).bfloat16(), torch.randn(4, 10).bfloat16()
    out = losses.kd_loss(s, t, 2.0)
    assert out.dtype == torch.float32
    assert out == pytest.approx(losses.kd_loss(s.float(), t.float(), 2.0).item(), rel=1e-6)


def test_reverse_kd_matches_formula():
    s, t = torch.randn(2, 6), torch.randn(2, 6)
    expected = sum(_naive_kl(torch.softmax(s[i], -1), torch.softmax(t[i], -1)) for i in range(2)) / 2
    assert losses.reverse_kd_loss(s, t) == pytest.approx(expected, rel=1e-5)


def test_hidden_mse_with_projection_and_mask():
    s, t = torch.randn(2, 4, 3), torch.randn(2, 4, 5)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    proj = torch.nn.Linear(3, 5)
    projected = proj(s).detach()
    rows = [(b, i) for b in range(2) for i in range(4) if mask[b, i]]
    expected = sum(float(((projected[b, i] - t[b, i]) ** 2).mean()) for b, i in rows) / len(rows)
    assert losses.hidden_mse(s, t, mask, proj).item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="no projection"):
        losses.hidden_mse(s, t, mask)


def test_cosine_hidden_loss():
    s, t = torch.randn(1, 3, 4), torch.randn(1, 3, 4)
    expected = sum(1 - float(torch.dot(s[0, i], t[0, i]) / (s[0, i].norm() * t[0, i].norm())) for i in range(3)) / 3
    assert losses.cosine_hidden_loss(s, t, None) == pytest.approx(expected, rel=1e-5)
    assert losses.cosine_hidden_loss(t, 3 * t, None) == pytest.approx(0.0, abs=1e-6)  # scale-invariant


def test_attention_mse_and_kl_over_real_positions():
    s = torch.softmax(torch.randn(1, 2, 3, 3), -1)
    t = torch.softmax(torch.randn(1, 2, 3, 3), -1)
    mask = torch.tensor([[1, 1, 0]])
    pairs = [(a, i, j) for a in range(2) for i in range(2) for j in range(2)]
    expected_mse = sum(float((s[0, a, i, j] - t[0, a, i, j]) ** 2) for a, i, j in pairs) / len(pairs)
    assert losses.attention_loss(s, t, mask, "mse") == pytest.approx(expected_mse, rel=1e-5)
    rows = [(a, i) for a in range(2) for i in range(2)]
    expected_kl = sum(_naive_kl(t[0, a, i], s[0, a, i]) for a, i in rows) / len(rows)
    assert losses.attention_loss(s, t, mask, "kl") == pytest.approx(expected_kl, rel=1e-4)
    with pytest.raises(ValueError, match="heads differ"):
        losses.attention_loss(s, t[:, :1], mask)


def test_minilm_relation_loss_matches_formula_with_different_widths():
    s, t = torch.randn(1, 3, 4), torch.randn(1, 3, 8)  # widths differ: fine for relations
    mask = torch.tensor([[1, 1, 0]])
    R = 2

    def relation(x, r):  # [T, T] softmax over the real keys only
        d = x.shape[-1] // R
        part = x[0, :, r * d:(r + 1) * d]
        scores = part @ part.T / math.sqrt(d)
        scores[:, 2] = -float("inf")
        return torch.softmax(scores, -1)

    rows = [(r, i) for r in range(R) for i in range(2)]
    expected = sum(_naive_kl(relation(t, r)[i, :2], relation(s, r)[i, :2]) for r, i in rows) / len(rows)
    assert losses.minilm_relation_loss(s, t, mask, R) == pytest.approx(expected, rel=1e-4)
    with pytest.raises(ValueError, match="not divisible"):
        losses.minilm_relation_loss(torch.randn(1, 3, 5), t, mask, R)


def test_mix():
    assert losses.mix_hard_and_soft(torch.tensor(2.0), torch.tensor(4.0), 0.25) == pytest.approx(3.5)


def test_topk_kd_loss_renormalises_the_teacher_over_its_k_tokens():
    s, t, T, k = torch.randn(2, 3, 9), torch.randn(2, 3, 9), 2.0, 4
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    values, ids = t.topk(k, dim=-1)
    kept = [(0, 0), (0, 1), (1, 0)]
    expected = 0.0
    for b, i in kept:
        p = torch.softmax(values[b, i] / T, -1)  # teacher over its top k only
        log_q = torch.log_softmax(s[b, i] / T, -1)[ids[b, i]]  # student over the whole vocabulary
        expected += sum(float(p[j]) * (math.log(float(p[j])) - float(log_q[j])) for j in range(k))
    expected = expected / len(kept) * T**2
    assert losses.topk_kd_loss(s, values, ids, T, mask) == pytest.approx(expected, rel=1e-5)


def test_topk_kd_loss_with_the_whole_vocabulary_is_exact_kd():
    s, t = torch.randn(2, 4, 6), torch.randn(2, 4, 6)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    values, ids = t.topk(6, dim=-1)
    for kind in ("kl", "ce"):
        assert losses.topk_kd_loss(s, values, ids, 3.0, mask, kind) == pytest.approx(
            float(losses.kd_loss(s, t, 3.0, mask, kind)), rel=1e-5)


def test_reverse_kd_loss_on_tokens_ignores_padding():
    s, t = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    kept = [(0, 0), (0, 1), (1, 0)]
    expected = sum(_naive_kl(torch.softmax(s[b, i], -1), torch.softmax(t[b, i], -1)) for b, i in kept) / len(kept)
    assert losses.reverse_kd_loss(s, t, 1.0, mask) == pytest.approx(expected, rel=1e-5)


def test_mean_pool_ignores_padding_and_embedding_mse_projects():
    hidden = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    pooled = mean_pool(hidden, mask)
    assert torch.allclose(pooled[0], hidden[0, :2].mean(0)) and torch.allclose(pooled[1], hidden[1].mean(0))
    student, teacher = torch.randn(5, 2), torch.randn(5, 3)
    projection = torch.nn.Linear(2, 3)
    expected = ((projection(student) - teacher) ** 2).mean().item()
    assert losses.embedding_mse(student, teacher, projection).item() == pytest.approx(expected, rel=1e-6)


def test_sampled_teacher_tokens_give_an_unbiased_kd_gradient():
    """The mean gradient of random-sampling KD over many draws approaches exact soft-CE KD's; top-k's does not."""
    torch.manual_seed(1)
    s = torch.randn(1, 3, 6, requires_grad=True)
    t = torch.randn(1, 3, 6) * 2
    T = 2.0
    exact = torch.autograd.grad(losses.kd_loss(s, t, T, None, "ce"), s)[0]
    mean = torch.zeros_like(s)
    draws = 400
    for i in range(draws):
        values, ids = losses.sample_teacher_tokens(t, T, 8, [torch.Generator().manual_seed(i)])
        assert ids.shape == (1, 3, 8) and torch.all(values == values[0, 0, 0])
        mean += torch.autograd.grad(losses.topk_kd_loss(s, values, ids, T, None, "ce"), s)[0] / draws
    assert torch.allclose(mean, exact, atol=0.01), (mean - exact).abs().max()
    values, ids = t.topk(2, dim=-1)
    truncated = torch.autograd.grad(losses.topk_kd_loss(s, values, ids, T, None, "ce"), s)[0]
    assert (truncated - exact).abs().max() > 0.05  # top-2 drops the tail: biased
    # one generator per row: a row's draws do not depend on what else is in the batch
    pair = losses.sample_teacher_tokens(t.repeat(2, 1, 1), T, 8, [torch.Generator().manual_seed(5),
                                                                  torch.Generator().manual_seed(5)])[1]
    alone = losses.sample_teacher_tokens(t, T, 8, [torch.Generator().manual_seed(5)])[1]
    assert torch.equal(pair[0], alone[0]) and torch.equal(pair[1], alone[0])


def test_the_pooled_loss_compares_each_model_s_mean_over_its_own_tokens():
    """Across tokenizers the two models see different token counts: each side is averaged over its own real tokens,
    the student's mean projected to the teacher's width, then the squared error is averaged."""
    from lmcompress.config import DistillLossConfig
    from lmcompress.distillation.components import DistillModule, intermediate_loss

    module = DistillModule(torch.nn.Identity(), student_width=2, teacher_width=3, n_projections=1)
    s_last, s_mask = torch.randn(2, 5, 2), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    t_last, t_mask = torch.randn(2, 3, 3), torch.tensor([[1, 1, 0], [1, 1, 1]])
    total, parts = intermediate_loss(module, (torch.randn(2, 5, 2), s_last), None, {1: t_last}, None, None, None,
                                     s_mask, [1], DistillLossConfig(pooled_weight=0.5), mean_pool(t_last, t_mask))
    projection, squares = module.projections[0], []
    for b in range(2):
        student = projection(sum(s_last[b, i] for i in range(5) if s_mask[b, i]) / int(s_mask[b].sum()))
        teacher = sum(t_last[b, i] for i in range(3) if t_mask[b, i]) / int(t_mask[b].sum())
        squares += [float(student[d].detach() - teacher[d]) ** 2 for d in range(3)]
    assert float(total) == pytest.approx(0.5 * sum(squares) / len(squares), rel=1e-5)
    assert float(parts["pooled"]) == pytest.approx(float(total))
    # beside a hidden-state loss (projection 0) the pooled loss takes the next projection
    module = DistillModule(torch.nn.Identity(), student_width=2, teacher_width=3, n_projections=2)
    t_pooled = mean_pool(t_last, t_mask)
    _, parts = intermediate_loss(module, (torch.randn(2, 5, 2), s_last), None, {1: torch.randn(2, 5, 3)}, None, None,
                                 None, s_mask,
                                 [1], DistillLossConfig(hidden_weight=1.0, pooled_weight=1.0), t_pooled)
    expected = losses.embedding_mse(mean_pool(s_last, s_mask), t_pooled, module.projections[1])
    assert float(parts["pooled"]) == pytest.approx(float(expected), rel=1e-6)


def test_only_the_pooled_loss_is_accepted_across_tokenizers(tiny_bert_dir):
    """Needs.positional says whether a loss pairs token positions; it follows the losses asked for, even when every
    mapped layer is the teacher's last (the layer the pooled loss reads)."""
    from transformers import AutoModel

    from lmcompress.config import DistillLossConfig
    from lmcompress.distillation.components import intermediate_needs

    model = AutoModel.from_pretrained(tiny_bert_dir)
    last = [model.config.num_hidden_layers]
    pooled = intermediate_needs(model, model, DistillLossConfig(pooled_weight=1.0), last)
    assert pooled.hidden == (last[0],) and pooled.pooled == last[0] and not pooled.positional
    for weights in ({"hidden_weight": 1.0}, {"cosine_weight": 1.0}, {"embedding_weight": 1.0}):
        assert intermediate_needs(model, model, DistillLossConfig(pooled_weight=1.0, **weights), last).positional
