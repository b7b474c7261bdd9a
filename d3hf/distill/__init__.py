"""Distillation: settings, budget, subtasks, experts, warm start, objectives, the distiller, the run and aggregation."""
