"""Fine-tuning transformed models: knowledge distillation from the original model."""

from edgecnn.train.distill import DistillConfig, TrainResult, distill, evaluate_top1, kd_loss

__all__ = ["DistillConfig", "TrainResult", "distill", "evaluate_top1", "kd_loss"]
