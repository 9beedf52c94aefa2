"""Word, line and character counts of a text, and its most frequent words."""

from collections import Counter


def summarize(text: str, top: int = 5) -> dict:
    """Counts for `text` and its `top` most common words (case-folded)."""
    words = [w.strip(".,;:!?\"'()[]").casefold() for w in text.split()]
    words = [w for w in words if w]
    return {
        "lines": text.count("\n") + (1 if text and not text.endswith("\n") else 0),
        "words": len(words),
        "characters": len(text),
        "top_words": Counter(words).most_common(top),
    }
