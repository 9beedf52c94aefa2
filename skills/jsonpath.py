"""Pick values out of nested JSON-like data with dotted paths such as "items.0.name"."""


def pick(data, path: str, default=None):
    """The value at dotted `path` in `data` (dict keys or list indexes), or `default`."""
    current = data
    for part in path.split(".") if path else []:
        if isinstance(current, list) and part.lstrip("-").isdigit():
            index = int(part)
            if not -len(current) <= index < len(current):
                return default
            current = current[index]
        elif isinstance(current, dict) and part in current:
            current = current[part]
        else:
            return default
    return current
