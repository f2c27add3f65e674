"""Pretraining: the loop, schedules and distributed helpers."""
