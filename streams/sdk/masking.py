"""Masking secrets in log text: passwords, tokens, credentials in URLs, card numbers.

In the SDK so an application can mask before a line leaves the process; the log governance
agent masks again with the configured patterns before anything is indexed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

MASK = "***"
# Label an application sets on a line it masked itself, so the governance agent still flags it.
MASKED_AT_SOURCE_LABEL = "stackstream_masked"


class InvalidSecretPattern(ValueError):
    """A configured secret pattern is not a regular expression."""


# Each pattern masks its `secret` group, or its `card` group when that is a Luhn-valid card
# number (keeping the last four digits), or else the whole match.
DEFAULT_SECRET_PATTERNS: tuple[str, ...] = (
    r"(?i)\b(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|client[_-]?secret"
    r"|private[_-]?key)\b[\"']?\s*[:=]\s*[\"']?(?P<secret>[^\s\"',;&)\]}<>]+)",
    r"(?i)\bauthorization\b[\"']?\s*[:=]\s*[\"']?(?:(?:bearer|basic)\s+)?(?P<secret>[^\s\"',;&)\]}<>]+)",
    r"(?i)\bbearer\s+(?P<secret>[A-Za-z0-9\-._~+/]+=*)",
    r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]+",
    r"://[^/\s:@]+:(?P<secret>[^@\s/]+)@",
    r"(?<![\d-])(?P<card>\d(?:[ -]?\d){12,18})(?![\d-])",
)


def luhn_valid(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


class SecretMasker:
    """Masks secrets in text with regular expressions (see DEFAULT_SECRET_PATTERNS)."""

    def __init__(self, patterns: Iterable[str] = DEFAULT_SECRET_PATTERNS) -> None:
        self.patterns: list[re.Pattern[str]] = []
        for pattern in patterns:
            try:
                self.patterns.append(re.compile(pattern))
            except re.error as error:
                raise InvalidSecretPattern(
                    f"secret pattern {pattern!r} is not a regular expression: {error}"
                ) from None
        self.detector = _detector(self.patterns)

    def mask(self, text: str) -> tuple[str, int]:
        """The text with secrets replaced, and how many were replaced."""
        if self.detector is not None and not self.detector.search(text):
            return text, 0
        count = 0
        for pattern in self.patterns:
            if not pattern.search(text):
                continue

            def replace(match: re.Match[str]) -> str:
                nonlocal count
                groups = match.re.groupindex
                whole = match.group(0)
                if "card" in groups and match.group("card") is not None:
                    digits = re.sub(r"\D", "", match.group("card"))
                    if not luhn_valid(digits):
                        return whole
                    name, replacement = "card", f"****{digits[-4:]}"
                elif "secret" in groups and match.group("secret") is not None:
                    name, replacement = "secret", MASK
                else:
                    count += 1
                    return MASK
                count += 1
                start, end = match.span(name)
                offset = match.start()
                return whole[: start - offset] + replacement + whole[end - offset :]

            text = pattern.sub(replace, text)
        return text, count


def _detector(patterns: Sequence[re.Pattern[str]]) -> re.Pattern[str] | None:
    """One alternation of all patterns (groups unnamed, leading flags scoped): a single pass
    tells whether any pattern can match, so most lines skip the per-pattern work. None when
    the patterns cannot be combined (back-references to named groups, other global flags)."""
    if not patterns:
        return None
    parts = []
    for pattern in patterns:
        source = re.sub(r"\(\?P<\w+>", "(?:", pattern.pattern)
        if source.startswith("(?i)"):
            source = f"(?i:{source[4:]})"
        parts.append(f"(?:{source})")
    try:
        return re.compile("|".join(parts))
    except re.error:
        return None


def mask_log_record(masker: SecretMasker, record: dict) -> dict:
    """A LogRecord dict with secrets masked in its text fields and labels (marked if any were)."""
    masked = 0
    cleaned = dict(record)
    for name in ("message", "error_message", "error_stack_trace"):
        if cleaned.get(name):
            cleaned[name], count = masker.mask(cleaned[name])
            masked += count
    labels = {}
    for key, value in (cleaned.get("labels") or {}).items():
        labels[key], count = masker.mask(value)
        masked += count
    if masked:
        labels[MASKED_AT_SOURCE_LABEL] = "true"
    cleaned["labels"] = labels
    return cleaned
