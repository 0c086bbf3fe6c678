"""Knowledge distillation: a smaller student trained on a teacher's soft targets.

    from minigpt.distill import distill_forward, distill_backward
    loss, cache = distill_forward(student_logits, teacher_logits, y, temperature=2.0, alpha=0.5)
    dlogits = distill_backward(1.0, cache)          # for student.backward(dlogits)

One module per idea: loss.py (the T^2-scaled KL + cross-entropy pair),
student.py (a student config and its initialisation from the teacher),
train.py (the loss as minigpt.train.train's loss_fn), hidden.py (cosine and
projected-MSE hidden-state losses), sequence.py (sequence-level
distillation: a training split the teacher wrote), errors.py (DistillError).
"""
from .errors import DistillError
from .loss import check_distill_args, distill_backward, distill_forward, soft_targets
from .student import init_student, layer_map, make_student, student_config
from .sequence import teacher_text_dataset
from .train import TeacherLogits, distill, distill_loss_fn

__all__ = ["DistillError", "check_distill_args", "distill_forward", "distill_backward", "soft_targets",
           "student_config", "layer_map", "init_student", "make_student",
           "distill", "distill_loss_fn", "TeacherLogits",
           "teacher_text_dataset"]
