"""Elasticsearch mapping pieces shared by the domains' index templates (plain data, no client)."""

from __future__ import annotations

from typing import Any

# Lucene refuses a term longer than 32,766 bytes and with it the whole document; a longer value
# stays in `_source` (searchable through the text fields, shown in results) but is not indexed
# as a term, as ECS templates do.
KEYWORD_IGNORE_ABOVE = 1024
KEYWORD: dict[str, Any] = {"type": "keyword", "ignore_above": KEYWORD_IGNORE_ABOVE}
