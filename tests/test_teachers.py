"""Teachers: timm names and student specs, CIFAR stems, weights files, freezing, checkpoint round trips.

CPU only, no downloads: the one test that asks for pretrained weights makes every download path fail.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from torch import nn

import students
import teachers
from distill.losses import DISTLoss, KDLoss
from teachers import FrozenTeacher, TeacherError

TINY = "r2_11_c8-16"  # a student spec as teacher: builds in milliseconds
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _stem_output_side(model: nn.Module, stage: nn.Module, side: int = 32) -> int:
    seen: list[int] = []
    handle = stage.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[-1]))
    model.eval()
    with torch.no_grad():
        model(torch.randn(1, 3, side, side))
    handle.remove()
    return seen[0]


# ------------------------------------------------------------------------------------------ names, modes


def test_resnet18_cifar_stem() -> None:
    model = teachers.create_teacher("resnet18", 10, mode="cifar")
    assert isinstance(model.conv1, nn.Conv2d)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1) and model.conv1.padding == (1, 1)
    assert model.conv1.bias is None and model.conv1.in_channels == 3 and model.conv1.out_channels == 64
    assert isinstance(model.maxpool, nn.Identity)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert _stem_output_side(model, model.layer1) == 32
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert model.pretrained_cfg["input_size"] == (3, 32, 32)


def test_deep_stem_keeps_its_later_convs() -> None:
    # resnet10t's stem is three 3x3 convs, the first with stride 2: only that one changes.
    model = teachers.create_teacher("resnet10t", 10)
    assert model.conv1[0].stride == (1, 1) and model.conv1[3].stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    assert _stem_output_side(model, model.layer1) == 32


def test_default_modes() -> None:
    assert teachers.default_mode("resnet50") == "cifar"
    assert teachers.default_mode("convnext_tiny") == "cifar"
    assert teachers.default_mode("vit_tiny_patch16_224") == "upsample"
    assert teachers.default_mode("fasternet_t0") == "upsample"  # a patch embedding: upsample unless asked
    assert teachers.default_mode(TINY) == "cifar"
    assert teachers.default_mode("seed004") == "cifar"


def test_unknown_teacher_suggests_close_names() -> None:
    with pytest.raises(TeacherError, match=r"unknown teacher 'resnet5O' \(did you mean .*resnet50") as info:
        teachers.create_teacher("resnet5O", 10)
    assert "\n" not in str(info.value)
    with pytest.raises(TeacherError, match="did you mean"):
        teachers.default_mode("wide_resnet50_3")
    with pytest.raises(TeacherError, match="bad teacher spec"):
        teachers.create_teacher("r2_1x", 10)
    with pytest.raises(TeacherError, match="teacher mode"):
        teachers.create_teacher(TINY, 10, mode="cifr")


def test_vit_in_cifar_mode_is_refused_before_building() -> None:
    with pytest.raises(TeacherError, match="--teacher-mode upsample"):
        teachers.create_teacher("vit_tiny_patch16_224", 10, mode="cifar")


# Stems other than ResNet's: (model, first stage, convolutions that must read the image at stride 1).
CIFAR_STEMS = [
    ("repvgg_a0", "stages.0", ["stem.conv_kxk.conv", "stem.conv_1x1.conv"]),  # 3x3 + 1x1 branches, summed
    ("mobileone_s0", "stages.0", ["stem.conv_kxk.0.conv", "stem.conv_scale.conv"]),
    ("fastvit_t8", "stages.0", ["stem.0.conv_kxk.0.conv", "stem.0.conv_scale.conv", "stem.1.conv_kxk.0.conv"]),
    ("dla34", "level2", ["base_layer.0", "level1.0"]),  # stride-1 7x7 first conv; the stem downsamples later
    ("test_efficientnet", "blocks.1", ["conv_stem"]),
    ("fasternet_t0", "stages.0", ["patch_embed.proj"]),  # a conv patch embedding without a fixed input size
]


@pytest.mark.parametrize("name,stage,convs", CIFAR_STEMS, ids=[c[0] for c in CIFAR_STEMS])
def test_cifar_stem_keeps_resolution_up_to_the_first_stage(name: str, stage: str, convs: list[str]) -> None:
    model = teachers.create_teacher(name, 10, mode="cifar")
    assert model.training  # the build's check forward left the mode alone
    assert all(model.get_submodule(conv).stride == (1, 1) for conv in convs)
    assert _stem_output_side(model, model.get_submodule(stage)) == 32
    with torch.no_grad():
        features = model.forward_features(torch.randn(2, 3, 32, 32))
        out = model.forward_head(features)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert min(features.shape[-2:]) > 1  # the final feature map is not squeezed to a single pixel


@pytest.mark.parametrize("name,fragment", [
    ("tresnet_m", "rearranges the image before its first convolution"),  # space-to-depth stem
    ("halonet26t", "does not run on 32x32 images in cifar mode"),  # halo attention needs larger maps
    ("swin_tiny_patch4_window7_224", "needs its fixed 224x224 input size"),
])
def test_models_that_cannot_run_in_cifar_mode_are_refused(name: str, fragment: str) -> None:
    with pytest.raises(TeacherError, match=fragment) as info:
        teachers.create_teacher(name, 10, mode="cifar")
    message = str(info.value)
    assert "\n" not in message and message.endswith("; use --teacher-mode upsample")
    teachers.create_teacher(name, 10, mode="upsample")  # the way out the message names works


def test_student_spec_as_teacher() -> None:
    model = teachers.create_teacher(TINY, 7)
    assert isinstance(model, students.CifarResNet) and model.num_classes == 7
    with pytest.raises(TeacherError, match="no pretrained weights"):
        teachers.create_teacher(TINY, 7, pretrained=True)


def test_pretrained_offline_fails_with_clear_message(monkeypatch) -> None:
    import timm.models._builder as builder

    def offline(*args, **kwargs):
        raise OSError("We have no connection now (test is offline)\nsecond line")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("load_state_dict_from_hf", "load_state_dict_from_url", "download_cached_file"):
        monkeypatch.setattr(builder, name, offline, raising=False)
    with pytest.raises(TeacherError) as info:
        teachers.create_teacher("resnet10t", 10, pretrained=True)
    message = str(info.value)
    assert message.startswith("pretrained weights for resnet10t could not be downloaded (")
    assert "test is offline" in message and "second line" not in message
    assert "--teacher-weights FILE" in message and "distill teacher" in message
    with pytest.raises(TeacherError, match="not both"):
        teachers.create_teacher("resnet10t", 10, pretrained=True, weights="x.pt")


# ----------------------------------------------------------------------------------------------- weights


def test_weights_file_with_other_head_in_cifar_mode(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = timm.create_model("resnet18", num_classes=1000)  # an "ImageNet" state dict: 7x7 stem, 1000 classes
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": source.state_dict()}, path)
    model = teachers.create_teacher("resnet18", 10, mode="cifar", weights=path)
    assert model.fc.weight.shape == (10, 512)  # head re-initialised for 10 classes
    assert model.conv1.weight.shape == (64, 3, 3, 3)  # 7x7 stem weights dropped
    for key in ("layer1.0.conv1.weight", "layer4.1.bn2.running_var", "bn1.weight"):
        assert torch.equal(model.state_dict()[key], source.state_dict()[key]), key


def test_weights_file_upsample_mode_and_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(0)
    source = timm.create_model("resnet10t", num_classes=5)
    path = tmp_path / "r10t.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model = teachers.create_teacher("resnet10t", 5, mode="upsample", weights=path)
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in model.state_dict().items())


def test_weights_file_that_does_not_fit(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save(timm.create_model("resnet10t", num_classes=10).state_dict(), path)
    with pytest.raises(TeacherError, match="do not fit teacher resnet18"):
        teachers.create_teacher("resnet18", 10, weights=path)
    with pytest.raises(TeacherError, match="do not exist"):
        teachers.create_teacher("resnet18", 10, weights=tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(TeacherError, match="corrupt"):
        teachers.create_teacher(TINY, 10, weights=tmp_path / "junk.pt")


# ------------------------------------------------------------------------------------------ frozen teacher


def test_frozen_teacher_stays_frozen() -> None:
    model = students.create(TINY, 10)
    frozen = FrozenTeacher(model)
    assert not any(p.requires_grad for p in frozen.parameters())
    frozen.train()
    assert not frozen.training and not any(m.training for m in frozen.modules())
    parent = nn.ModuleDict({"teacher": frozen}).train()  # a parent's .train() reaches it through children()
    assert parent.training and not frozen.training and not model.training
    bn = model.stem.bn
    before = bn.running_mean.clone()
    out = frozen(torch.randn(4, 3, 32, 32) * 3 + 1)
    assert torch.equal(bn.running_mean, before)  # eval mode: BatchNorm statistics never move
    assert not out.is_inference() and not out.requires_grad
    assert frozen.num_classes == 10


@pytest.mark.parametrize("loss_fn", [KDLoss(), DISTLoss()], ids=["kd", "dist"])
def test_teacher_frozen_after_kd_step(loss_fn: nn.Module) -> None:
    torch.manual_seed(0)
    teacher = FrozenTeacher(students.create(TINY, 10))
    student = students.create(TINY, 10).train()
    images, labels = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    parts = loss_fn(student(images), teacher(images), labels)
    parts["loss"].backward()
    for name, p in student.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_teacher_logits_can_be_saved_for_backward() -> None:
    # Products save their inputs for backward; an inference-mode tensor there would raise.
    teacher = FrozenTeacher(students.create(TINY, 10))
    student = students.create(TINY, 10)
    images = torch.randn(2, 3, 32, 32)
    (student(images) * teacher(images)).sum().backward()
    assert all(p.grad is not None for p in student.parameters())


def test_renormalisation_matches_teacher_normalised_input() -> None:
    torch.manual_seed(0)
    model = students.create(TINY, 10).eval()
    raw = torch.rand(3, 3, 32, 32)  # pixels as fractions of 255
    student_mean, student_std = students.CIFAR10_MEAN, students.CIFAR10_STD

    def normalise(mean, std):
        return (raw - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)

    frozen = FrozenTeacher(model, student_mean=student_mean, student_std=student_std,
                           teacher_mean=IMAGENET_MEAN, teacher_std=IMAGENET_STD)
    with torch.no_grad():
        expected = model(normalise(IMAGENET_MEAN, IMAGENET_STD))
    assert torch.allclose(frozen(normalise(student_mean, student_std)), expected, atol=1e-5)
    same = FrozenTeacher(model, student_mean=student_mean, student_std=student_std,
                         teacher_mean=student_mean, teacher_std=student_std)
    assert same.adapter.is_identity


def test_upsample_resizes_on_the_device() -> None:
    model = teachers.create_teacher("resnet10t", 10, mode="upsample")
    assert model.conv1[0].stride == (2, 2)  # unchanged timm model
    sides: list[int] = []
    model.register_forward_pre_hook(lambda _m, args: sides.append(args[0].shape[-1]))
    frozen = FrozenTeacher(model, resize_to=64)
    out = frozen(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and sides == [64]
    # The rule-based wrapper: native size from pretrained_cfg, ImageNet statistics in upsample mode.
    auto = teachers.freeze_teacher(model, mode="upsample", student_mean=students.CIFAR10_MEAN,
                                   student_std=students.CIFAR10_STD)
    assert auto.adapter.size == tuple(model.pretrained_cfg["input_size"][-2:]) and auto.adapter.renormalise
    cifar = teachers.freeze_teacher(students.create(TINY, 10), mode="upsample",
                                    student_mean=students.CIFAR10_MEAN, student_std=students.CIFAR10_STD)
    assert cifar.adapter.is_identity  # a student teacher is a CIFAR net whatever the mode


# ------------------------------------------------------------------------------------ checkpoint round trip


@pytest.mark.parametrize("name,mode", [("resnet10t", "cifar"), ("resnet10t", "upsample"), (TINY, None)])
def test_checkpoint_round_trip(tmp_path: Path, name: str, mode: str | None) -> None:
    torch.manual_seed(0)
    model = teachers.create_teacher(name, 10, mode=mode).eval()
    with torch.no_grad():  # move BN statistics away from their initial values so the reload has to restore them
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    arch = teachers.teacher_arch(name, 10, mode)
    assert arch["family"] == ("student" if name == TINY else "timm")
    path = students.save_checkpoint(tmp_path / "teacher.pt", model, arch=arch, meta={"epoch": 3})
    loaded, ckpt = teachers.load_model(path)
    assert ckpt["meta"]["epoch"] == 3 and not loaded.training
    side = 32 if mode != "upsample" else 64
    images = torch.randn(2, 3, side, side)
    with torch.no_grad():
        assert torch.equal(loaded(images), model(images))
    if mode == "upsample":
        assert arch["resize_to"] == model.pretrained_cfg["input_size"][-1]


def test_load_model_rejects_mismatched_weights(tmp_path: Path) -> None:
    model = teachers.create_teacher("resnet10t", 10)
    arch = teachers.teacher_arch("resnet10t", 10, "upsample")  # recorded mode does not match the weights' stem
    arch["num_classes"] = 7
    path = students.save_checkpoint(tmp_path / "bad.pt", model, arch=arch)
    with pytest.raises(students.CheckpointError, match="do not fit"):
        teachers.load_model(path)
    with pytest.raises(students.CheckpointError, match="unknown architecture family"):
        teachers.build_from_arch({"family": "keras"})


def test_folded_teacher_matches_unfolded() -> None:
    torch.manual_seed(0)
    model = students.create("r2_11_c8-16", 10).eval()
    for m in model.modules():  # non-trivial BatchNorm statistics, as after training
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    x = torch.randn(4, 3, 32, 32)
    plain, folded = FrozenTeacher(model), FrozenTeacher(model, fold_bn=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.model.modules())
    torch.testing.assert_close(folded(x), plain(x), rtol=1e-4, atol=1e-5)
    assert folded.num_classes == 10 and not any(p.requires_grad for p in folded.parameters())


def test_checkpoints_keep_the_stem_surgery_they_were_trained_with() -> None:
    """A cifar-mode arch records its stem version; one written before versioning rebuilds with the old surgery."""
    arch = teachers.teacher_arch("rexnet_100", 10, "cifar")
    assert arch["cifar_stem"] == teachers.models.CIFAR_STEM_VERSION == 2
    x = torch.zeros(1, 3, 32, 32)
    current = teachers.build_from_arch(arch).eval()
    legacy = teachers.build_from_arch({k: v for k, v in arch.items() if k != "cifar_stem"}).eval()
    with torch.no_grad():
        assert current.forward_features(x).shape[-2:] == (4, 4)
        assert legacy.forward_features(x).shape[-2:] == (2, 2)  # what version-1 checkpoints were trained on
    assert [p.shape for p in current.parameters()] == [p.shape for p in legacy.parameters()]
    assert "cifar_stem" not in teachers.teacher_arch("resnet18", 10, "upsample")
