"""Offline tools (never imported by the runtime node): data, teacher, distillation, evaluation.

Run as ``python -m training.<tool>``.
"""
