"""Metrics, the audit log and structured logs."""
