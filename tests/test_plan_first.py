"""The memory plan comes before the work it plans (the sizes audit): a request is planned at the size the model
makes, not the size asked of a demo model; a depth map's photo past the size limits is refused as such before its
memory is planned; a refusal's amounts show which is the larger. (An outpaint canvas refused before it is encoded:
test_memory_budget.py.)"""

import pytest
from PIL import Image

from mflux_core.errors import InvalidRequest
from mflux_core.manager import ModelManager
from mflux_core.memory import apart_texts
from mflux_core.request import GenerationRequest
from tests.test_memory_budget import budget_leaving

def test_a_demo_model_is_planned_at_the_size_it_makes(tmp_path):
    manager = ModelManager(models_dir=tmp_path, memory_budget_bytes=budget_leaving(100 * 10**6).bytes)
    result = manager.generate(GenerationRequest(model="demo", prompt="a blue square", steps=1, seed=2, width=4096,
                                                height=4096))
    assert result.image.size == (128, 128)  # 4096 px would need 0.7 GB: the demo makes 128 px, in a few MB
    assert any("demo makes 48x48 to 128x128 images only" in note for note in result.notes)


def test_a_depth_photo_past_the_size_limit_is_refused_as_such():
    with pytest.raises(InvalidRequest, match="The photo to estimate depth from would be 5000x5000 pixels, past the "
                                             "4096-pixel limit a side"):
        ModelManager(memory_budget_bytes=10**9).estimate_depth(Image.new("RGB", (5000, 5000)))


def test_a_refusal_shows_which_amount_is_the_larger():
    assert apart_texts(int(1.04e9), 10**9) == ("1.04 GB", "1.00 GB")
    assert apart_texts(int(2.1e9), 10**9) == ("2.1 GB", "1.0 GB")


def test_a_kontext_reference_is_planned_before_it_is_encoded(tiny_kontext, tmp_path):
    """A 4096x4096 reference is read at Kontext's nearest trained resolution, 1024x1024, whatever the output's size:
    its encoding is checked against the budget before it runs."""
    Image.new("RGB", (4096, 4096), "red").save(tmp_path / "reference.png")
    manager = ModelManager(models_dir=tmp_path, memory_budget_bytes=budget_leaving(40 * 10**6).bytes)
    request = GenerationRequest(tool="kontext", model=str(tiny_kontext), prompt="make it blue", steps=1, seed=2,
                                width=64, height=64, image_path=str(tmp_path / "reference.png"))
    with pytest.raises(InvalidRequest, match=r"^Encoding the 1024x1024 reference needs about .* while encoding the "
                                             r"input image"):
        manager.generate(request)
    Image.new("RGB", (64, 64), "red").save(tmp_path / "small.png")
    assert manager.generate(request.with_(image_path=str(tmp_path / "small.png"))).image.size == (64, 64)
