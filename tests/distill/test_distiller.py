"""The distillation engine: learning, exact resume, expert buffer reuse, budget refusal,
mixed precision and non-finite losses."""

import json
import os

import numpy as np
import pytest
import torch

from d3hf.distill.budget import BudgetError
from d3hf.distill.config import MatchingArguments
from d3hf.distill.distiller import (
    CHECKPOINT_NAME,
    CPU_MMD_CHUNK_BYTES,
    Distiller,
    NonFiniteError,
    embedding_batch_size,
    mmd_chunk_classes,
)
from d3hf.distill.experts import ExpertBuffer, build_expert_buffer, epoch_orders
from d3hf.distill.runner import build_config, expert_settings, run_distillation
from tests.helpers import make_distiller, tiny_args


def _snapshot(distiller):
    return {k: v.detach().clone() for k, v in distiller.model.state_dict().items()}


def test_buffer_has_the_requested_trajectories(digits_buffer):
    s = digits_buffer.settings
    assert len(digits_buffer) == 2
    assert digits_buffer.kept_epochs == [0, 1, 2, 3, 4]  # epochs 0..max_start_epoch + expert_epochs, and the last
    assert digits_buffer.final_epoch() == 4
    first, last = digits_buffer.snapshot(0, 0), digits_buffer.snapshot(0, 4)
    assert first.dtype == torch.float32 and first.shape == last.shape
    assert not torch.equal(first, last)
    assert not torch.equal(digits_buffer.snapshot(0, 0), digits_buffer.snapshot(1, 0))  # experts differ
    assert s.depth == 2 and s.width == 8


@pytest.mark.parametrize("augment", ["none", "dsa"])
def test_experts_trained_at_once_equal_experts_trained_one_by_one(digits, tmp_path, augment):
    view = digits.subset(range(10))
    assert view.keep_train_in_memory()
    settings = expert_settings(tiny_args(num_experts=3, expert_augment=augment))
    assert settings.augment == augment
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one_by_one = build_expert_buffer(view, settings, str(tmp_path / "a"), show_progress=False)
    finally:
        torch.set_num_threads(threads)
    at_once = build_expert_buffer(view, settings, str(tmp_path / "b"), show_progress=False, workers=3)
    assert torch.get_num_threads() == threads  # restored
    for i in range(3):
        for epoch in one_by_one.kept_epochs:
            assert torch.equal(one_by_one.snapshot(i, epoch), at_once.snapshot(i, epoch)), (i, epoch)
    if augment == "dsa":  # each expert draws its own augmentations: same start, another path than without
        plain = build_expert_buffer(view, expert_settings(tiny_args(num_experts=1)), str(tmp_path / "c"),
                                    show_progress=False)
        assert torch.equal(plain.snapshot(0, 0), at_once.snapshot(0, 0))
        assert not torch.equal(plain.snapshot(0, 1), at_once.snapshot(0, 1))


def test_distillation_lowers_the_loss(digits, digits_buffer):
    args = tiny_args(iterations=50)
    distiller = make_distiller(digits, digits_buffer, args)
    history = distiller.run(args.matching.iterations, show_progress=False)
    assert len(history) == 50 and distiller.iteration == 50
    losses = np.array([h["loss"] for h in history])
    assert np.isfinite(losses).all()
    assert losses[-10:].mean() < losses[:10].mean()
    assert all({"mtt", "mmd", "step_size", "kxx", "kyy", "kxy"} <= set(h) for h in history)


def test_compile_inner_step_installs_a_compiled_step_unless_steps_are_recomputed(digits, digits_buffer, monkeypatch):
    import d3hf.distill.distiller as distiller_module

    built = []
    monkeypatch.setattr(distiller_module, "compiled_inner_step", lambda student: built.append(student) or "step")
    assert make_distiller(digits, digits_buffer, tiny_args(compile_inner_step=True, checkpoint_steps="false")).step_fn \
        == "step" and len(built) == 1
    assert make_distiller(digits, digits_buffer, tiny_args(compile_inner_step=True, checkpoint_steps="true")).step_fn \
        is None
    assert make_distiller(digits, digits_buffer, tiny_args()).step_fn is None


def test_matched_segments_start_inside_the_start_epoch_window(digits, digits_buffer, monkeypatch):
    args = tiny_args(min_start_epoch=2, max_start_epoch=3)
    distiller = make_distiller(digits, digits_buffer, args)
    requested = []
    snapshot = digits_buffer.snapshot
    monkeypatch.setattr(digits_buffer, "snapshot", lambda e, epoch: requested.append(epoch) or snapshot(e, epoch))
    distiller.run(5, show_progress=False)
    assert requested == [2, 2 + args.matching.expert_epochs] * 5  # the only start epoch in [2, 3), and its target


@pytest.mark.parametrize("feature_net", ["expert", "random"])
def test_resume_from_checkpoint_equals_an_uninterrupted_run(digits, digits_buffer, tmp_path, feature_net):
    args = tiny_args(iterations=6, mmd_feature_net=feature_net)
    straight = make_distiller(digits, digits_buffer, args)
    straight.run(6, show_progress=False)

    first = make_distiller(digits, digits_buffer, args)
    first.run(3, show_progress=False)
    first.save_checkpoint(str(tmp_path))
    del first
    resumed = make_distiller(digits, digits_buffer, tiny_args(iterations=6, seed=123, mmd_feature_net=feature_net))
    resumed.args = args.matching
    assert resumed.load_checkpoint(str(tmp_path))
    assert resumed.iteration == 3
    resumed.run(6, show_progress=False)

    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert torch.equal(straight.log_step_size, resumed.log_step_size)
    assert [h["loss"] for h in straight.history] == [h["loss"] for h in resumed.history]


def test_load_checkpoint_without_file_returns_false(digits, digits_buffer, tmp_path):
    distiller = make_distiller(digits, digits_buffer, tiny_args())
    assert distiller.load_checkpoint(str(tmp_path)) is False
    assert distiller.iteration == 0


@pytest.mark.parametrize("augment", ["none", "dsa"])
def test_step_checkpointing_gives_the_same_step(digits, digits_buffer, augment):
    plain = make_distiller(digits, digits_buffer, tiny_args(checkpoint_steps="false", mtt_augment=augment))
    ckpt = make_distiller(digits, digits_buffer, tiny_args(checkpoint_steps="true", mtt_augment=augment))
    assert not plain.checkpoint_steps and ckpt.checkpoint_steps
    rp, rc = plain.step(), ckpt.step()
    assert rc["mtt"] == pytest.approx(rp["mtt"], rel=1e-6)
    for k, v in plain.model.state_dict().items():
        torch.testing.assert_close(ckpt.model.state_dict()[k], v, atol=1e-6, rtol=1e-5)
    if augment == "dsa":  # the inner steps did see augmented images: another loss than without
        unaugmented = make_distiller(digits, digits_buffer, tiny_args(checkpoint_steps="false")).step()
        assert rp["mtt"] != pytest.approx(unaugmented["mtt"], rel=1e-4)


# ----------------------------------------------------------------------------- expert buffer


def test_expert_buffer_is_reused_rebuilt_and_fp16_is_half_size(digits, tmp_path):
    path = str(tmp_path / "buf")
    settings = expert_settings(tiny_args(num_experts=1))
    buffer = build_expert_buffer(digits, settings, path, show_progress=False)
    expert_file = os.path.join(path, "expert_0.safetensors")
    mtime = os.stat(expert_file).st_mtime_ns
    fp32_size = buffer.size_on_disk()
    fp32_first = buffer.snapshot(0, 0)

    again = build_expert_buffer(digits, settings, path, show_progress=False)
    assert os.stat(expert_file).st_mtime_ns == mtime  # reused, not retrained
    assert torch.equal(again.snapshot(0, 3), buffer.snapshot(0, 3))

    half = expert_settings(tiny_args(num_experts=1, expert_dtype="float16"))
    rebuilt = build_expert_buffer(digits, half, path, show_progress=False)
    assert os.stat(expert_file).st_mtime_ns != mtime  # settings changed: rebuilt
    with open(os.path.join(path, "settings.json")) as f:
        assert json.load(f)["settings"]["dtype"] == "float16"
    assert 0.4 < rebuilt.size_on_disk() / fp32_size < 0.6
    torch.testing.assert_close(rebuilt.snapshot(0, 0), fp32_first, atol=2e-3, rtol=1e-3)  # same seed, fp16 storage


def test_epoch_orders_sweep_the_whole_split_in_epochs_of_the_given_rows():
    whole = epoch_orders(np.random.default_rng(0), 10)
    reference = np.random.default_rng(0)
    for _ in range(3):  # 0: a fresh permutation per epoch, as experts always drew
        assert np.array_equal(next(whole), reference.permutation(10))
    orders = epoch_orders(np.random.default_rng(0), 10, epoch_rows=4)
    epochs = [next(orders) for _ in range(5)]  # 20 rows: two whole permutations
    assert all(len(e) == 4 for e in epochs)
    stream = np.concatenate(epochs)
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:]) == list(range(10))


def test_experts_snapshot_every_epoch_rows_and_old_buffers_still_match(digits, tmp_path):
    path = str(tmp_path / "buf")
    args = tiny_args(num_experts=1, expert_epochs_total=3, max_start_epoch=1, expert_epoch_rows=512)
    buffer = build_expert_buffer(digits, expert_settings(args), path, show_progress=False)
    batches = -(-512 // args.experts.expert_batch_size)
    assert buffer.settings.epoch_rows == 512 and len(buffer.history["0"]) == 3
    assert not torch.equal(buffer.snapshot(0, 0), buffer.snapshot(0, 1))
    # One "epoch" of 512 rows is two batches of 256: the expert moved less than after a full pass.
    full = build_expert_buffer(digits, expert_settings(args.replace(expert_epoch_rows=0)), str(tmp_path / "full"),
                               show_progress=False)
    assert batches == 2 and len(digits.class_rows[0]) * 10 > 512
    moved = (buffer.snapshot(0, 1) - buffer.snapshot(0, 0)).norm()
    assert moved < (full.snapshot(0, 1) - full.snapshot(0, 0)).norm()
    # A buffer written before expert_epoch_rows existed is still reused by a run at its default (0).
    meta_path = os.path.join(str(tmp_path / "full"), "settings.json")
    with open(meta_path) as f:
        meta = json.load(f)
    del meta["settings"]["epoch_rows"]
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    mtime = os.stat(os.path.join(str(tmp_path / "full"), "expert_0.safetensors")).st_mtime_ns
    build_expert_buffer(digits, expert_settings(args.replace(expert_epoch_rows=0)), str(tmp_path / "full"),
                        show_progress=False)
    assert os.stat(os.path.join(str(tmp_path / "full"), "expert_0.safetensors")).st_mtime_ns == mtime


def test_expert_buffer_is_rebuilt_when_the_data_changes(digits, tmp_path):
    path = str(tmp_path / "buf")
    settings = expert_settings(tiny_args(num_experts=1, expert_epochs_total=3, max_start_epoch=1))
    build_expert_buffer(digits, settings, path, show_progress=False)
    mtime = os.stat(os.path.join(path, "expert_0.safetensors")).st_mtime_ns
    build_expert_buffer(digits.subset([0, 1, 2]), settings, path, show_progress=False)
    assert os.stat(os.path.join(path, "expert_0.safetensors")).st_mtime_ns != mtime
    assert ExpertBuffer(path).fingerprint == digits.subset([0, 1, 2]).fingerprint()


# ----------------------------------------------------------------------------- budget refusal


def test_explicit_decoder_over_budget_is_refused_with_the_ledger(digits, tmp_path):
    args = tiny_args(ipc_budget=1.0, decoder="64", output_dir=str(tmp_path / "run"))
    with pytest.raises(BudgetError) as err:
        build_config(args, digits)
    message = str(err.value)
    assert "decoder_0" in message and "total" in message and "ipc_budget" in message
    with pytest.raises(BudgetError, match="decoder_0"):
        run_distillation(args, show_progress=False)
    assert not os.path.exists(args.run.output_dir)  # refused before any work


def test_auto_representation_fits_the_budget(digits):
    config = build_config(tiny_args(ipc_budget=1.0, decoder="auto"), digits)
    from d3hf.modeling.storage import estimate_storage

    ledger = estimate_storage(config)
    assert 0.8 <= ledger.ipc_equivalent <= 1.0
    assert config.source["num_train_rows"] == 1437
    assert config.normalization_mean == pytest.approx(digits.normalization()[0])


# ----------------------------------------------------------------------------- precision and failures


@pytest.mark.parametrize("checkpoint_steps", ["false", "true"])
def test_one_step_under_accelerate_bf16(digits, digits_buffer, fresh_accelerate_state, checkpoint_steps):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True, mixed_precision="bf16")
    distiller = make_distiller(digits, digits_buffer, tiny_args(checkpoint_steps=checkpoint_steps),
                               device=accelerator.device,
                               autocast=accelerator.autocast)
    before = _snapshot(distiller)
    record = distiller.step()
    for key in ("mtt", "mmd", "loss", "step_size"):
        assert np.isfinite(record[key]), key
    assert distiller.model.prior_means.dtype == torch.float32
    assert not torch.equal(before["prior_means"], distiller.model.prior_means)


def test_non_finite_loss_stops_before_the_update(digits, digits_buffer, tmp_path, monkeypatch):
    args = tiny_args(iterations=2, checkpoint_every=1)
    distiller = make_distiller(digits, digits_buffer, args)
    distiller.run(2, checkpoint_dir=str(tmp_path), show_progress=False)
    checkpoint = tmp_path / CHECKPOINT_NAME
    saved = checkpoint.read_bytes()
    before = _snapshot(distiller)

    monkeypatch.setattr(Distiller, "mtt_term", lambda self: (torch.tensor(float("nan")), {}))
    with pytest.raises(NonFiniteError, match=r"iteration 2\b.*mtt"):
        distiller.run(4, checkpoint_dir=str(tmp_path), show_progress=False)
    assert checkpoint.read_bytes() == saved
    after = distiller.model.state_dict()
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    assert distiller.iteration == 2


def test_auto_step_checkpointing_turns_on_when_the_plain_unroll_would_not_fit(monkeypatch):
    from d3hf.distill import distiller as engine

    monkeypatch.setattr(engine, "available_memory", lambda device: 8 * 2**30)
    cpu = torch.device("cpu")
    mnist_like = dict(image_shape=(1, 28, 28), num_classes=10, device=cpu)
    assert not engine.use_step_checkpointing(MatchingArguments(syn_steps=10, samples_per_class=10), 32, **mnist_like)
    assert engine.use_step_checkpointing(MatchingArguments(syn_steps=80, samples_per_class=20), 32, **mnist_like)
    assert engine.use_step_checkpointing(MatchingArguments(syn_steps=1, checkpoint_steps="true"), 8, **mnist_like)


def test_auto_student_depth_keeps_every_block_on_maps_of_at_least_4x4():
    from d3hf.nn.networks import auto_depth

    assert [auto_depth((1, s, s)) for s in (4, 8, 16, 28, 32, 64)] == [1, 2, 3, 3, 3, 3]
    assert expert_settings(tiny_args(student_depth=0), (1, 8, 8)).depth == 2
    assert expert_settings(tiny_args(student_depth=3), (1, 8, 8)).depth == 3


# ----------------------------------------------------------------------------- callbacks


def test_callbacks_see_each_expert_iteration_and_the_artifact_in_order(tmp_path):
    from d3hf import DistillCallback

    events = []

    class Record(DistillCallback):
        def on_expert_saved(self, index, path):
            events.append(("expert", index, os.path.exists(path)))

        def on_iteration_end(self, iteration, record):
            events.append(("iteration", iteration, "loss" in record))

        def on_artifact_written(self, folder):
            events.append(("artifact", os.path.exists(os.path.join(folder, "model.safetensors")),
                           os.path.exists(tmp_path / "run" / "artifact")))  # written, not yet in place

    args = tiny_args(iterations=3, init_steps=5, output_dir=str(tmp_path / "run"))
    model, _ = run_distillation(args, show_progress=False, callbacks=[Record()])
    assert model is not None
    assert events == [("expert", 0, True), ("expert", 1, True), ("iteration", 1, True), ("iteration", 2, True),
                      ("iteration", 3, True), ("artifact", True, False)]


def test_mmd_reads_real_features_embedded_once_as_it_would_compute_them(digits, digits_buffer):
    args = tiny_args(mtt_weight=0.0)
    cached = make_distiller(digits, digits_buffer, args)
    fresh = make_distiller(digits, digits_buffer, args, memory_bytes=0)  # no room: embedded every iteration
    assert cached.real_features is not None and fresh.real_features is None
    assert cached.real_features.shape == (len(digits.labels()), cached.feature_net.feature_dim)
    for _ in range(3):  # the same rows drawn, the same features to float tolerance, the same losses
        a, b = cached.step(), fresh.step()
        assert a["mmd"] == pytest.approx(b["mmd"], rel=1e-4, abs=1e-6)


def test_a_random_mmd_feature_net_is_drawn_afresh_each_iteration_from_the_run_seed(digits, digits_buffer):
    def weights(net):  # the convolutions' and the classifier's (norm layers start at 1 and 0 in any network)
        return torch.cat([p.detach().flatten().clone() for p in net.parameters() if p.dim() > 1])

    args = tiny_args(mtt_weight=0.0, mmd_feature_net="random")
    drawn = make_distiller(digits, digits_buffer, args)
    assert drawn.real_features is None  # a network that changes cannot embed the real side once
    nets, losses = [weights(drawn.feature_net)], []
    for _ in range(2):
        losses.append(drawn.step()["mmd"])
        nets.append(weights(drawn.feature_net))
    assert not torch.equal(nets[1], nets[0]) and not torch.equal(nets[2], nets[1])  # not the expert, not reused
    assert abs(float(torch.corrcoef(torch.stack(nets[:2]))[0, 1])) < 0.1  # drawn anew, not the expert moved
    again = make_distiller(digits, digits_buffer, args)  # the same seed draws the same networks and losses
    assert [again.step()["mmd"] for _ in range(2)] == pytest.approx(losses, rel=1e-6)
    assert torch.equal(weights(again.feature_net), nets[2])
    expert = make_distiller(digits, digits_buffer, tiny_args(mtt_weight=0.0)).step()["mmd"]
    assert expert != pytest.approx(losses[0], rel=1e-3)


def test_the_one_off_embedding_batches_fit_their_memory_budget(digits, digits_buffer, monkeypatch):
    from d3hf.nn.networks import ConvNet

    wide = ConvNet((3, 32, 32), 10, 3, 128)  # 172,032 feature-map scalars per image: 688 KB
    assert embedding_batch_size(wide, (3, 32, 32), budget=64 * 2**20) == 97
    assert embedding_batch_size(wide, (3, 32, 32), budget=1) == 1  # never an empty batch
    assert embedding_batch_size(ConvNet((1, 8, 8), 10, 2, 8), (1, 8, 8), budget=64 * 2**20) == 512  # small images: the cap
    sizes = []
    iter_batches = type(digits).iter_batches
    monkeypatch.setattr(type(digits), "iter_batches",
                        lambda self, split, batch_size: sizes.append(batch_size) or iter_batches(self, split, batch_size))
    monkeypatch.setattr("d3hf.distill.distiller.EMBED_BATCH_BYTES", 4 * 2000)
    distiller = make_distiller(digits, digits_buffer, tiny_args(mtt_weight=0.0))
    per_image = distiller.feature_net.activation_scalars(digits.image_shape)
    assert 1 < sizes[0] < 512 and sizes == [2000 // per_image] and distiller.real_features.shape[0] == len(digits.labels())


def test_auto_mmd_chunks_are_capped_on_the_cpu_and_a_quarter_of_free_memory_on_a_gpu(monkeypatch):
    free = 64 * 2**30
    monkeypatch.setattr("d3hf.distill.distiller.available_memory", lambda device: free)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    args, per_class = MatchingArguments(mmd_chunk_classes="auto"), 100 * 2**20
    assert mmd_chunk_classes(args, 1000, per_class, torch.device("cpu")) == CPU_MMD_CHUNK_BYTES // per_class == 2
    assert mmd_chunk_classes(args, 1000, per_class, torch.device("cuda")) == free // 4 // per_class
    assert mmd_chunk_classes(args, 1000, 10 * free, torch.device("cpu")) == 1  # never an empty chunk
    assert mmd_chunk_classes(args, 3, 1, torch.device("cpu")) == 3  # never more than the classes
    free = 512 * 2**20  # little free memory: its quarter, shared by the processes on the machine, bounds the chunk
    assert mmd_chunk_classes(args, 1000, 2**20, torch.device("cpu")) == 64
    assert mmd_chunk_classes(MatchingArguments(mmd_chunk_classes="7"), 1000, per_class, torch.device("cpu")) == 7


@pytest.mark.parametrize("chunk, augment", [("3", "none"), ("1", "none"), ("3", "dsa")])
def test_mmd_in_chunks_gives_the_loss_and_gradients_of_the_whole_term(digits, digits_buffer, chunk, augment):
    args = tiny_args(mmd_weight=5.0, samples_per_class=2, mmd_augment=augment)
    whole = make_distiller(digits, digits_buffer, args.replace(mmd_chunk_classes="10"))
    parts = make_distiller(digits, digits_buffer, args.replace(mmd_chunk_classes=chunk))
    assert (whole.mmd_chunk_classes, parts.mmd_chunk_classes) == (10, int(chunk))
    for _ in range(2):  # the same draws, losses and updates: the chunks add up to the term
        a, b = whole.step(), parts.step()
        for key in ("mtt", "mmd", "loss", "kxx", "kyy", "kxy", "grad_norm_priors", "grad_norm_decoder"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-7), key
    for (name, p), q in zip(whole.model.named_parameters(), parts.model.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-6, msg=name)
    # The whole term as one graph (for tools) is the sum of the chunks, drawn alike.
    chunked = make_distiller(digits, digits_buffer, args.replace(mmd_chunk_classes=chunk))
    one = make_distiller(digits, digits_buffer, args.replace(mmd_chunk_classes=chunk))
    values = [float(value.detach()) for value, _ in chunked.mmd_chunks()]
    assert len(values) == -(-10 // int(chunk))
    assert float(one.mmd_term()[0]) == pytest.approx(sum(values), rel=1e-5)


def test_mmd_augment_puts_each_class_real_and_decoded_images_under_one_dsa_draw(digits, digits_buffer):
    from d3hf.nn.augment import DSA, DSAConfig

    args = tiny_args(mtt_weight=0.0)
    augmented = make_distiller(digits, digits_buffer, args.replace(mmd_augment="dsa"))
    assert augmented.real_features is None  # augmented real images cannot be embedded once
    classes, n, _, _, _, augments = augmented._mmd_draw()
    assert len(augments) == len(classes) == 10 and all(
        v.shape[0] == 1 for params in augments for v in params.values.values())  # one draw per class
    x = torch.randn(len(classes) * n, *digits.image_shape)
    out = augmented._siamese(x, n, augments)
    for k, params in enumerate(augments):
        torch.testing.assert_close(out[k * n : (k + 1) * n], augmented.mmd_augment.apply(x[k * n : (k + 1) * n], params))
    # Drawn after everything else: an identity augmentation gives the unaugmented term's first value;
    # DSA proper gives another.
    plain = make_distiller(digits, digits_buffer, args).step()["mmd"]
    identity = make_distiller(digits, digits_buffer, args.replace(mmd_augment="dsa"))
    identity.mmd_augment = DSA(DSAConfig(brightness=0, saturation=0, contrast=0, crop=0, scale=0, rotate_degrees=0,
                                         cutout=0))
    assert identity.step()["mmd"] == pytest.approx(plain, rel=1e-4, abs=1e-6)
    assert make_distiller(digits, digits_buffer, args.replace(mmd_augment="dsa")).step()["mmd"] != pytest.approx(
        plain, rel=1e-3)


def test_auto_mmd_chunks_fit_a_quarter_of_the_free_memory(digits, digits_buffer, monkeypatch):
    from d3hf.distill import distiller as module

    args = tiny_args()
    roomy = make_distiller(digits, digits_buffer, args)
    assert roomy.mmd_chunk_classes == 10  # digits' MMD term is a few MB
    per_class = module.MMD_BYTES_PER_SCALAR * args.matching.mmd_samples * module.mmd_activation_scalars(
        roomy.model, roomy.feature_net, digits.image_shape)
    monkeypatch.setattr(module, "available_memory", lambda device: 4 * 3 * per_class + 5)
    assert make_distiller(digits, digits_buffer, args).mmd_chunk_classes == 3
    monkeypatch.setattr(module, "available_memory", lambda device: 0)
    assert make_distiller(digits, digits_buffer, args).mmd_chunk_classes == 1


def test_activation_scalars_count_every_feature_map():
    from d3hf.modeling.decoders import DecoderSpec
    from d3hf.nn.networks import ConvNet

    spec = DecoderSpec(z_dim=4, out_shape=[1, 8, 8], channels=[4, 2], start_hw=[4, 4], upsample="transpose4")
    assert spec.activation_scalars() == 4 * 16 + 2 * 64 + 1 * 64
    net = ConvNet((1, 8, 8), 10, depth=2, width=3)
    assert net.activation_scalars((1, 8, 8)) == 3 * 64 + 3 * 16


# A valid value other than tiny_args' for every key a run may leave unread (the test below
# demands one for each key DistillArguments.unread_settings names).
OTHER_VALUES = dict(
    syn_steps=2, expert_epochs=2, min_start_epoch=1, max_start_epoch=3, samples_per_class=3, mtt_augment="dsa",
    lr_step_size=0.05, init_step_size=0.02, checkpoint_steps="true", compile_inner_step=True, mtt_weight=0.5,
    mmd_weight=2.0, mmd_samples=6, mmd_bandwidths="1,3", mmd_kernel_scale="absolute", mmd_augment="dsa",
    mmd_feature_net="random", mmd_classes_per_iter=3, mmd_chunk_classes="2", lr_priors=0.5, lr_decoder=2e-3, num_experts=1,
    expert_epochs_total=5, expert_lr=0.02, expert_batch_size=64, expert_epoch_rows=300, expert_augment="dsa",
    expert_dtype="float16", buffer_dir="elsewhere", student_depth=1, student_width=4,
)


@pytest.mark.parametrize("run", [dict(iterations=0), dict(iterations=2, mtt_weight=0), dict(iterations=2, mmd_weight=0)],
                         ids=["no matching", "MMD only", "MTT only"])
def test_settings_a_run_leaves_unread_do_not_change_its_artifact(tmp_path, run):
    from tests.helpers import assert_same_weights, weights

    base = tiny_args(expert_epochs_total=6, **run, output_dir=str(tmp_path / "base"))
    unread = base.unread_settings()
    assert unread and unread <= set(OTHER_VALUES)
    other = {k: OTHER_VALUES[k] if k != "buffer_dir" else str(tmp_path / k) for k in unread}
    assert all(other[k] != v for k, v in base.to_dict().items() if k in other)
    run_distillation(base, show_progress=False)
    run_distillation(base.replace(**other, output_dir=str(tmp_path / "other")), show_progress=False)
    assert_same_weights(weights(tmp_path / "base"), weights(tmp_path / "other"))
    # A setting the run reads does change it: the comparison above can fail.
    read = "init_steps" if run["iterations"] == 0 else "lr_decoder"
    run_distillation(base.replace(**{read: OTHER_VALUES.get(read, 20)}, output_dir=str(tmp_path / "read")),
                     show_progress=False)
    changed = weights(tmp_path / "read")
    assert any(not torch.equal(changed[k], v) for k, v in weights(tmp_path / "base").items())
