import torch

from lmcompress.distillation.cache import TeacherCache, TopKCache, teacher_fingerprint


def test_round_trip_ragged_hidden_states_and_reuse(tmp_path):
    ids = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    cache = TeacherCache(tmp_path, "teacherA", ids, num_classes=2, hidden_layers=(0, 2), hidden_size=3)
    idx = torch.tensor([2, 0])
    assert not cache.has(idx)
    logits = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    hidden = {layer: torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3) + layer for layer in (0, 2)}
    cache.write(idx, logits, hidden)
    assert cache.has(idx) and not cache.has(torch.tensor([1]))
    got_logits, got_hidden = cache.read(torch.tensor([0, 2]), seq_len=5)
    torch.testing.assert_close(got_logits, logits[[1, 0]])
    # example 0 has 3 real tokens: rows 0..2 of its batch slot, zeros after (padding)
    torch.testing.assert_close(got_hidden[2][0, :3], hidden[2][1, :3])
    assert got_hidden[2][0, 3:].abs().sum() == 0
    torch.testing.assert_close(got_hidden[0][1, :4], hidden[0][0, :4])
    cache.flush()
    again = TeacherCache(tmp_path, "teacherA", ids, num_classes=2, hidden_layers=(0, 2), hidden_size=3)
    assert again.folder == cache.folder and again.has(idx)  # persisted, reused
    other_teacher = TeacherCache(tmp_path, "teacherB", ids, num_classes=2, hidden_layers=(0, 2), hidden_size=3)
    other_data = TeacherCache(tmp_path, "teacherA", [[1, 2, 3], [4, 5], [6, 7, 8]], 2, (0, 2), 3)
    assert len({cache.folder, other_teacher.folder, other_data.folder}) == 3  # invalidated by either change
    assert not other_teacher.has(idx)


def test_teacher_fingerprint_changes_with_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"abc")
    first = teacher_fingerprint(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"abd")
    assert teacher_fingerprint(tmp_path) != first


def test_students_with_other_layer_maps_share_the_cache(tmp_path):
    """Layers computed for one student are reused by the next; only missing layers force the teacher to run."""
    ids = [[1, 2], [3, 4, 5]]
    first = TeacherCache(tmp_path, "t", ids, num_classes=2, hidden_layers=(1, 2, 3), hidden_size=2)
    idx = torch.tensor([0, 1])
    hidden = {layer: torch.full((2, 3, 2), float(layer)) for layer in (1, 2, 3)}
    first.write(idx, torch.zeros(2, 2), hidden)
    first.flush()
    subset = TeacherCache(tmp_path, "t", ids, num_classes=2, hidden_layers=(1, 3), hidden_size=2)
    assert subset.folder == first.folder and subset.has(idx)
    _, got = subset.read(idx, seq_len=3)
    assert set(got) == {1, 3} and float(got[3][1, 2, 0]) == 3.0 and float(got[3][0, 2, 0]) == 0.0  # padding zero
    wider = TeacherCache(tmp_path, "t", ids, num_classes=2, hidden_layers=(3, 4), hidden_size=2)
    assert wider.folder == first.folder and not wider.has(idx)  # layer 4 was never computed
    logits_only = TeacherCache(tmp_path, "t", ids, num_classes=2)
    assert logits_only.has(idx)


def test_topk_cache_round_trip_in_batch_order_and_reopened(tmp_path):
    values = torch.randn(5, 8, 3)  # [N, T, k]
    ids = torch.randint(0, 100, (5, 8, 3))
    cache = TopKCache(tmp_path, "teacher", "blocks", n=5, seq_len=8, k=3)
    assert not cache.has(torch.tensor([0]))
    cache.write(torch.tensor([3, 1]), values[[3, 1], :6], ids[[3, 1], :6])  # a batch padded to 6 of 8 positions
    assert cache.has(torch.tensor([1, 3])) and not cache.has(torch.tensor([1, 2]))
    cache.flush()
    again = TopKCache(tmp_path, "teacher", "blocks", n=5, seq_len=8, k=3)  # a later run opens the same files
    got_values, got_ids = again.read(torch.tensor([3, 1]), 6)  # unsorted batch order is kept
    assert torch.equal(got_values, values[[3, 1], :6].half().float())
    assert torch.equal(got_ids, ids[[3, 1], :6])
    assert again.stats()["cached"] == 2 and again.hits == 2
    other = TopKCache(tmp_path, "teacher", "other blocks", n=5, seq_len=8, k=3)  # another corpus: another folder
    assert other.folder != again.folder and not other.has(torch.tensor([1]))


def test_a_teacher_in_another_precision_never_reads_the_cached_outputs(tmp_path):
    """bf16 and fp32 teacher outputs differ, so an fp32 run must not be handed what a bf16 run cached (and back)."""
    ids = [[1, 2, 3], [4, 5]]
    fp32 = TeacherCache(tmp_path, "t", ids, num_classes=2, precision="fp32")
    fp32.write(torch.tensor([0, 1]), torch.zeros(2, 2), {})
    fp32.flush()
    bf16 = TeacherCache(tmp_path, "t", ids, num_classes=2, precision="bf16")
    assert bf16.folder != fp32.folder and not bf16.has(torch.tensor([0]))
    assert TeacherCache(tmp_path, "t", ids, num_classes=2, precision="fp32").has(torch.tensor([0, 1]))
    topk = TopKCache(tmp_path, "t", "blocks", n=2, seq_len=8, k=3, precision="fp32")
    assert TopKCache(tmp_path, "t", "blocks", n=2, seq_len=8, k=3, precision="bf16").folder != topk.folder
