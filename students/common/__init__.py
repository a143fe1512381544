"""The toolkit's base layer: what every package shares and nothing in it depends on.

- :mod:`.errors`: :class:`UserError`, the one-line "bad input" error every command turns into exit code 2;
- :mod:`.console`: the rich console, logging set-up and the CLI entry wrapper (used by CLI modules only);
- :mod:`.sizes`: ``4.9M`` / ``350k`` parsing and formatting, for the CLI boundary;
- :mod:`.files`: atomic file writes.

It lives inside ``students`` because ``students`` is the lowest of the four packages (students <- teachers
<- distill <- prune: each imports only those before it), so every package can import it; it imports
nothing from any of them.
"""

from .errors import UserError
from .files import WriteError, atomic_write_bytes, atomic_write_text
from .sizes import format_count, parse_count

__all__ = ["UserError", "WriteError", "atomic_write_bytes", "atomic_write_text", "format_count", "parse_count"]
