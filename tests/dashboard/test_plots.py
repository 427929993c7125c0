"""Equity and drawdown plots: PNGs from matplotlib, served to staff, shown in the admin."""

from __future__ import annotations

import io
import re

import pytest
from PIL import Image

from apps.dashboard.plots import equity_drawdown_png
from apps.dashboard.selectors import drawdown_curve

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_drawdown_is_the_fall_from_the_running_peak() -> None:
    assert drawdown_curve([1.0, 1.2, 0.9, 1.3]) == pytest.approx([0.0, 0.0, 0.25, 0.0])


def test_a_curve_renders_as_a_png_of_the_asked_size() -> None:
    png = equity_drawdown_png([1.0, 1.1, 0.95, 1.2], title="t", width_px=600, height_px=400)
    assert png.startswith(PNG_MAGIC)
    image = Image.open(io.BytesIO(png))
    assert image.size == (600, 400)
    # Not blank: the curves put many colours on the canvas.
    assert len(image.convert("RGB").getcolors(maxcolors=1_000_000)) > 20


def test_an_empty_or_broken_curve_still_renders() -> None:
    assert equity_drawdown_png([], title="nothing").startswith(PNG_MAGIC)
    assert equity_drawdown_png([float("nan"), 1.0], title="nan").startswith(PNG_MAGIC)


@pytest.mark.django_db
def test_the_plot_endpoint_serves_a_png_for_each_episode(staff_client, world) -> None:
    for episode in (world.evaluation, world.paper):
        response = staff_client.get(f"/rl/episodes/{episode.pk}/plot.png")
        assert response.status_code == 200
        assert response["Content-Type"] == "image/png"
        assert response.content.startswith(PNG_MAGIC)


@pytest.mark.django_db
def test_the_episode_admin_page_shows_its_plot(staff_client, world) -> None:
    html = staff_client.get(
        f"/admin/training/tradingepisode/{world.evaluation.pk}/change/"
    ).content.decode()
    assert f'src="/rl/episodes/{world.evaluation.pk}/plot.png"' in html


@pytest.mark.django_db
def test_the_model_admin_page_shows_a_plot_per_episode(staff_client, world) -> None:
    response = staff_client.get(f"/admin/training/rlmodel/{world.model.pk}/change/")
    assert response.status_code == 200
    shown = set(re.findall(r'src="/rl/episodes/(\d+)/plot.png"', response.content.decode()))
    assert shown == {str(world.evaluation.pk), str(world.paper.pk)}
