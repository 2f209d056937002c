"""Adaptation methods: source-only training, Progressive Translation Learning (PTL)."""
