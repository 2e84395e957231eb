"""Small pieces shared across packages (BPE tables, safe unpickling, strict JSON, device choice);
imports only the standard library and torch, so any package may use it without a cycle."""
