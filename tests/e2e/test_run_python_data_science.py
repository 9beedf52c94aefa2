"""run_python in the data-science image (numpy, pandas, matplotlib), through a real gateway and the SDK
client: a plot comes back as a PNG that decodes at the figure's size, a DataFrame as a Markdown table,
numpy state lives across calls and survives an interrupted loop, and the image cap holds."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from typing import Any

import pytest
from mcp import Client
from mcp.types import ImageContent
from PIL import Image

from gateway.backend.docker_engine import DockerBackend
from tests.e2e.conftest import Gateway, mcp_client, start_gateway, stop_gateway

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, backend: DockerBackend) -> Iterator[Gateway]:
    running = start_gateway(tmp_path_factory.mktemp("ds"), principals={"dana": "data-science"})
    yield running
    stop_gateway(running)
    assert backend.list({"sandbox-gateway.gateway": running.gateway_id}) == []


async def run(client: Client, code: str, **arguments: Any) -> tuple[dict[str, Any], list[ImageContent]]:
    answer = await client.call_tool("run_python", {"code": code, **arguments})
    assert not answer.is_error, answer.content
    assert answer.structured_content is not None
    return answer.structured_content, [block for block in answer.content if isinstance(block, ImageContent)]


async def test_a_plot_comes_back_as_a_png_of_the_figures_size(gateway: Gateway) -> None:
    code = (
        "import matplotlib.pyplot as plt\nimport numpy as np\n"
        "x = np.linspace(0, 6.3, 100)\nplt.figure(figsize=(4, 3), dpi=100)\nplt.plot(x, np.sin(x))\n"
        "plt.title('sine')"
    )
    async with mcp_client(gateway.url, gateway.tokens["dana"]) as client:
        result, images = await run(client, code, timeout_s=120)
        again, more = await run(client, "len(plt.get_fignums())")
    assert result["error"] is None and len(images) == 1 and images[0].mime_type == "image/png"
    picture = Image.open(io.BytesIO(base64.b64decode(images[0].data)))
    picture.load()  # decodes the whole image, not only its header
    assert picture.format == "PNG" and picture.size == (400, 300)
    assert result["outputs"][0] == {
        "mime": "image/png",
        "bytes": len(base64.b64decode(images[0].data)),
        "text": None,
        "width": 400,
        "height": 300,
        "note": False,
    }
    assert len({picture.getpixel((x, 150)) for x in range(400)}) > 2, "a curve was drawn, not a blank image"
    assert again["value"] == "0" and more == [], "a shown figure is closed, not shown again"


async def test_a_dataframe_comes_back_as_a_markdown_table(gateway: Gateway) -> None:
    code = "import pandas as pd\ndf = pd.DataFrame({'city': ['Oslo', 'Lima'], 'temp': [3.5, 19.0]})\ndf"
    async with mcp_client(gateway.url, gateway.tokens["dana"]) as client:
        small, _ = await run(client, code, timeout_s=120)
        big, _ = await run(client, "pd.DataFrame({'n': range(1000)})")
    table = small["outputs"][0]
    assert table["mime"] == "text/markdown"
    lines = table["text"].splitlines()
    assert lines[0].split("|")[2:4] == [" city   ", "   temp "]
    assert "| Oslo   |    3.5 |" in table["text"] and "| Lima   |   19   |" in table["text"]
    assert "city" in small["value"] and "Oslo" in small["value"], "the value is the DataFrame's repr"
    big_table = big["outputs"][0]["text"]
    assert big_table.count("\n|") == 1 + 50 and "(1000 rows; the first 50 shown)" in big_table


async def test_numpy_state_lives_across_calls_and_survives_an_interrupted_loop(gateway: Gateway) -> None:
    async with mcp_client(gateway.url, gateway.tokens["dana"]) as client:
        await run(client, "import numpy as np\na = np.arange(10)\nsteps = 0", timeout_s=120)
        stopped, _ = await run(client, "while True:\n    a = a + 1 - 1\n    steps += 1", timeout_s=2)
        after, _ = await run(client, "int(a.sum()), steps > 0")
    assert stopped["interrupted"] is True and stopped["interpreter_killed"] is False
    assert after["value"] == "(45, True)" and after["state_lost"] is False


async def test_figures_beyond_the_image_cap_are_dropped_with_a_note(gateway: Gateway) -> None:
    code = "import matplotlib.pyplot as plt\nfor i in range(10):\n"
    code += "    plt.figure(figsize=(1, 1))\n    plt.plot([i])"
    async with mcp_client(gateway.url, gateway.tokens["dana"]) as client:
        result, images = await run(client, code, timeout_s=120)
    assert len(images) == 8, "the profile's max_images"
    notes = [item for item in result["outputs"] if item["note"]]
    assert [item["text"] for item in notes] == [
        "figure 9 not shown: above this call's image cap",
        "figure 10 not shown: above this call's image cap",
    ]
