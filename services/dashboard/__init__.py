"""The built-in live dashboard: a page served from the package that reads Prometheus (docs/dashboard.md)."""

from services.dashboard.queries import DashboardSpec, Panel, Query, build_spec
from services.dashboard.server import DashboardServer

__all__ = ["DashboardServer", "DashboardSpec", "Panel", "Query", "build_spec"]
