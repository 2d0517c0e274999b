"""Former name of ``mixlora.scoring`` (the official scorers), kept so existing imports and commands keep working.

``from mixlora.eval import ScoringError`` and ``python -m mixlora.eval.score ...`` behave exactly as their
``mixlora.scoring`` counterparts: every module here re-exports the one of the same name in ``mixlora.scoring``
(the objects are the same, not copies). New code should import ``mixlora.scoring``.
"""

from mixlora.scoring import *  # noqa: F401,F403
from mixlora.scoring import __all__  # noqa: F401
