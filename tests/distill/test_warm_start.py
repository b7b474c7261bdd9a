import torch

from d3hf.distill.aggregation import subtask_config
from d3hf.distill.runner import build_config
from d3hf.distill.warm_start import WarmStartSettings, kmeans, warm_start
from d3hf.modeling.modeling_d3 import D3Model
from tests.helpers import assert_same_weights, tiny_args, weights


def test_kmeans_finds_separated_blobs_and_is_seeded():
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = torch.cat([c + 0.1 * torch.randn(20, 2, generator=gen) for c in centres])
    a = kmeans(points, 3, torch.Generator().manual_seed(1))
    b = kmeans(points, 3, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    for blob in range(3):  # each blob is one cluster, and the clusters differ
        assert len(set(a[20 * blob: 20 * (blob + 1)].tolist())) == 1
    assert len(set(a.tolist())) == 3


def _fresh_model(digits, seed=0):
    config = build_config(tiny_args(decoder="auto"), digits)
    torch.manual_seed(seed)
    return D3Model(subtask_config(config, 0))


def _class_means(digits):
    return torch.stack([digits.images(rows).mean(0) for rows in digits.class_rows])


def _nearest_class(images, class_means):
    return torch.cdist(images.flatten(1), class_means.flatten(1)).argmin(1)


def test_warm_start_makes_each_prior_draw_its_own_class(digits):
    settings = WarmStartSettings(steps=150, rows_per_class=100)
    model = _fresh_model(digits)
    means = _class_means(digits)
    labels = model.prior_labels
    with torch.no_grad():
        before = (_nearest_class(model(torch.arange(model.config.num_priors)), means) == labels).float().mean()
    stats = warm_start(model, digits, settings)
    with torch.no_grad():
        images, sample_labels = model.sample(10, seed=3)
    after = (_nearest_class(images, means) == sample_labels).float().mean()
    assert after >= 0.8 > before + 0.3, (before, after)
    assert torch.isfinite(model.prior_logvars).all() and stats["warm_start_recon"] > 0

    again = _fresh_model(digits)
    warm_start(again, digits, settings)
    for (name, x), (_, y) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(x, y), name


def test_distill_warm_starts_only_with_init_vae(tmp_path):
    from d3hf.distill.runner import run_distillation

    timings = {}
    for init in ("vae", "random"):
        _, summary = run_distillation(tiny_args(init=init, iterations=2, output_dir=str(tmp_path / init)),
                                      show_progress=False)
        timings[init] = summary["subtasks"][0]["timings"]
    assert timings["vae"]["warm_start_s"] > 0 and "warm_start_s" not in timings["random"]



def test_a_run_without_matching_trains_no_experts_and_gives_the_same_artifact(tmp_path, monkeypatch):
    from d3hf.distill import runner

    args = tiny_args(iterations=0, output_dir=str(tmp_path / "plain"))
    _, summary = runner.run_distillation(args, show_progress=False)
    timings = summary["subtasks"][0]["timings"]
    assert "experts_s" not in timings and timings["warm_start_s"] > 0
    assert not (tmp_path / "plain" / "subtasks" / "0" / "experts").exists()
    # The same run through the matching path (experts built, zero iterations) writes the same tensors.
    monkeypatch.setattr(runner, "uses_experts", lambda *_: True)
    _, summary = runner.run_distillation(args.replace(output_dir=str(tmp_path / "through")), show_progress=False)
    assert summary["subtasks"][0]["timings"]["experts_s"] > 0
    assert_same_weights(weights(tmp_path / "plain"), weights(tmp_path / "through"))
    # What asks for experts: matching, the validation curve's MTT loss, soft labels.
    monkeypatch.undo()
    assert not runner.uses_experts(args, soft_labels=False)
    assert runner.uses_experts(args.replace(iterations=1), soft_labels=False)
    assert runner.uses_experts(args.replace(eval_every=5, validation_size=0.1, eval_epochs=2), soft_labels=False)
    assert runner.uses_experts(args, soft_labels=True)

def test_the_warm_start_reads_its_rows_a_batch_at_a_time(digits, monkeypatch):
    """Memory bounded by the batch, not by classes x rows_per_class (1,000 classes at ImageNet size)."""
    reads = []
    original = type(digits).images

    def recording(self, indices, split="train", device=None):
        reads.append(len(indices))
        return original(self, indices, split, device)

    monkeypatch.setattr(type(digits), "images", recording)
    warm_start(_fresh_model(digits), digits, WarmStartSettings(steps=5, batch_size=16, rows_per_class=100))
    assert reads[:5] == [16] * 5 and max(reads) <= 512  # the steps' batches, then the posteriors in 512s
    assert sum(reads[5:]) == sum(min(len(r), 100) for r in digits.class_rows)  # every kept row encoded once
