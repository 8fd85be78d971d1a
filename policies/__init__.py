"""Security policies of the edge fleet: one rule registry (``policies.rules``) used by the
CrossGuard pack (``policies/__main__.py``), the in-program guard (``policies.guard``) and the
audit CLI (``python -m policies.audit``)."""
