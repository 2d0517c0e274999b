"""scripts/grad_norms.py on a saved straight-through run of the tiny stack.

References: the arithmetic of the routing gradient, not the script's own output. The last adapted linear of the
last layer (layer 1's down_proj) has no router downstream of it, so the gradient reaching it, and with it its
routers' gradient, is the same whether or not the router input is detached; every earlier layer's factors get
an extra gradient through the later layers' router inputs under ``straight_through`` only. Frozen routers get
no gradient at all. Bad input exits with status 2.
"""

import importlib.util
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_setup import suite, train  # noqa: E402,F401  (the small synthetic suite)

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "grad_norms.py"
LAST_ROUTER = "llm.model.layers.1.mlp.down_proj.router_a.weight"
FIRST_POOL = "llm.model.layers.0.self_attn.q_proj.lora_a"


def _script():
    spec = importlib.util.spec_from_file_location("grad_norms", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_detaching_the_router_input_changes_only_the_gradient_through_it(suite, tmp_path, capsys):
    script = _script()
    run = tmp_path / "st"
    train(suite, run, "trainer.max_steps=2", "adapter.router_grad=straight_through", "adapter.dropout=0")
    norms = {mode: script.grad_norms(run, samples=4, router_grad=mode, top=1000)
             for mode in ("straight_through", "straight_through_detached", "none")}
    tensors = {mode: {t["name"]: t["grad_norm"] for t in r["largest"]} for mode, r in norms.items()}
    st, det, frozen = tensors["straight_through"], tensors["straight_through_detached"], tensors["none"]
    assert norms["straight_through"]["loss"] == norms["straight_through_detached"]["loss"]  # same forward
    assert st[LAST_ROUTER] == det[LAST_ROUTER] > 0
    assert not math.isclose(st[FIRST_POOL], det[FIRST_POOL], rel_tol=1e-6)
    assert not any(".router_" in name or name.endswith("router_cfs") for name in frozen)
    assert "router_cfs" in norms["straight_through"]["groups"] and "router_cfs" not in norms["none"]["groups"]
    assert set(frozen) == {n for n in st if ".router_" not in n and not n.endswith("router_cfs")}

    assert script.main([str(run), "--samples", "4", "--router-grad", "sideways"]) == 2
    assert "router_grad='sideways' is not a valid option" in capsys.readouterr().err
    assert script.main([str(tmp_path / "nowhere")]) == 2
    assert "is not a run directory" in capsys.readouterr().err
