"""Former location of the generation loop, now ``mixlora.tasks.evaluate`` (beside the tasks it runs).

``import mixlora.evaluate`` gives that very module (the same object, so attributes and monkeypatches are shared);
new code should import ``mixlora.tasks.evaluate``.
"""

import sys

from mixlora.tasks import evaluate as _evaluate

sys.modules[__name__] = _evaluate
