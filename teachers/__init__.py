"""Teachers: any timm model or student spec, fitted to CIFAR input, frozen for distillation.

>>> import teachers
>>> net = teachers.create_teacher("resnet18", num_classes=10)             # cifar mode: 3x3 stem, no max-pool
>>> vit = teachers.create_teacher("vit_tiny_patch16_224", 10)             # upsample mode: native 224x224
>>> frozen = teachers.freeze_teacher(net, mode="cifar", student_mean=CIFAR10_MEAN, student_std=CIFAR10_STD)
>>> model, ckpt = teachers.load_model("runs/teacher/best.pt")           # any of our checkpoints, pruned too
>>> arch = teachers.pruned_arch(pruned_net, teachers.teacher_arch("resnet18", 10))  # widths of a pruned timm net
"""

from .frozen import FrozenTeacher, InputAdapter, arch_adapter, freeze_teacher, input_adapter
from .models import (
    MODES,
    TeacherError,
    build_from_arch,
    create_teacher,
    default_mode,
    find_teacher_name_suggestions,
    is_student_name,
    load_model,
    load_weights,
    pruned_arch,
    read_state_dict,
    teacher_arch,
)
from .pruned import PRUNED_LAYERS_KEY, PrunedModelError, sync_head_width

__all__ = [
    "FrozenTeacher", "InputAdapter", "MODES", "arch_adapter", "TeacherError", "build_from_arch", "create_teacher",
    "default_mode", "find_teacher_name_suggestions", "freeze_teacher", "input_adapter", "is_student_name",
    "load_model", "load_weights", "PRUNED_LAYERS_KEY", "PrunedModelError", "pruned_arch",
    "read_state_dict", "sync_head_width", "teacher_arch",
]
