"""The sidecar's routes, one router per concern: `publish`, `read`, `stream`, `ops`.

Each module's `router(settings, …)` makes an `APIRouter`: the settings shape the routes
(their limits are in the OpenAPI schema), the guard says who may call them, and the
objects with a lifetime come from `app.state` (api/state.py) at request time.
"""
