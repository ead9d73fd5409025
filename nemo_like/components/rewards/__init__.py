"""Scripted judges of generated text: behaviours a program can check without a reference model."""
