"""Vault storage behind one small interface; see base.py."""
