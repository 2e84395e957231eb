"""Small pieces shared across packages (the user-error class, BPE tables, safe unpickling, strict JSON
and config.json, the JSON-lines reader, settings diffing, file writes with the umask's modes, device
choice); imports only the standard library and torch (safetensors inside the one function that
writes it), so any package may use it without a cycle."""
