"""HTTP plumbing shared by every protocol: middleware, multipart, errors, strict JSON."""
