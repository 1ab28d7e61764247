"""Vectorised ray casting against analytic primitives, used by the synthetic scene generator.

Rays come as origins [3] and directions [N, 3] whose camera-z component is 1, so the hit
parameter ``t`` *is* the z-depth. Each primitive returns (t [N], valid [N]) and a shader that maps
hit points to colours in [0, 1]. The world is right-handed, z up, metres.
"""

import dataclasses

import numpy as np

_EPS = 1e-6
SUN = np.array([0.45, -0.35, 0.82]) / np.linalg.norm([0.45, -0.35, 0.82])


def hash_colours(i: np.ndarray, j: np.ndarray, salt: int) -> np.ndarray:
  """A deterministic pseudo-random colour in [0.15, 0.95]^3 per integer cell (i, j)."""
  h = (i.astype(np.int64) * 73856093) ^ (j.astype(np.int64) * 19349663) ^ (salt * 83492791)
  h = (h ^ (h >> 13)) * 1274126177
  channels = [((h >> s) & 0xFF).astype(np.float64) / 255.0 for s in (0, 8, 16)]
  return 0.15 + 0.8 * np.stack(channels, axis=-1)


def _squared_norms(v: np.ndarray) -> np.ndarray:
  return v[:, 0] * v[:, 0] + v[:, 1] * v[:, 1] + v[:, 2] * v[:, 2]


def _lambert(normals: np.ndarray) -> np.ndarray:
  return (0.4 + 0.6 * np.clip(normals @ SUN, 0.0, 1.0))[:, None]


@dataclasses.dataclass
class Ground:
  """The plane z = 0, tiled with 2 m cells of hashed colours and a faint 1 m checker."""
  salt: int

  def intersect(self, origin, dirs):
    dz = dirs[:, 2]
    safe = np.where(np.abs(dz) > _EPS, dz, -1.0)
    t = -origin[2] / safe
    return t, (dz < -_EPS) & (t > _EPS)

  def shade(self, points, dirs):
    del dirs
    ix, iy = np.floor(points[:, 0] / 2), np.floor(points[:, 1] / 2)
    colour = hash_colours(ix, iy, self.salt)
    fine = (np.floor(points[:, 0]) + np.floor(points[:, 1])) % 2
    return colour * (0.8 + 0.2 * fine)[:, None] * _lambert(np.array([[0.0, 0.0, 1.0]]))


@dataclasses.dataclass
class Dome:
  """A sphere seen from inside, the background: hashed colour cells in azimuth x elevation."""
  centre: np.ndarray
  radius: float
  salt: int

  def intersect(self, origin, dirs):
    oc = origin - self.centre
    a = _squared_norms(dirs)
    b = 2.0 * dirs @ oc
    c = oc @ oc - self.radius ** 2  # < 0: the origin is inside, the far root is the hit
    t = (-b + np.sqrt(np.maximum(b * b - 4 * a * c, 0.0))) / (2 * a)
    return t, t > _EPS

  def shade(self, points, dirs):
    del dirs
    q = (points - self.centre) / self.radius
    azimuth = np.arctan2(q[:, 1], q[:, 0])
    elevation = np.arcsin(np.clip(q[:, 2], -1.0, 1.0))
    cells = hash_colours(np.floor(azimuth / (np.pi / 18)), np.floor(elevation / (np.pi / 24)),
                         self.salt)
    sky = np.clip(elevation / (np.pi / 2), 0.0, 1.0)[:, None]
    return (1 - 0.5 * sky) * cells + 0.5 * sky * np.array([0.55, 0.7, 0.95])


@dataclasses.dataclass
class Sphere:
  """A sphere with a latitude-longitude checker of two colours that spins about z."""
  centre: np.ndarray
  radius: float
  colours: np.ndarray  # [2, 3]
  spin: float = 0.0  # radians
  flat: bool = False  # unlit solid colours[0] (the marker)

  def intersect(self, origin, dirs):
    oc = origin - self.centre
    a = _squared_norms(dirs)
    b = 2.0 * dirs @ oc
    c = oc @ oc - self.radius ** 2
    disc = b * b - 4 * a * c
    root = np.sqrt(np.maximum(disc, 0.0))
    near, far = (-b - root) / (2 * a), (-b + root) / (2 * a)
    t = np.where(near > _EPS, near, far)
    return t, (disc >= 0) & (t > _EPS)

  def shade(self, points, dirs):
    del dirs
    if self.flat:
      return np.broadcast_to(self.colours[0], points.shape).copy()
    n = (points - self.centre) / self.radius
    longitude = np.arctan2(n[:, 1], n[:, 0]) - self.spin
    latitude = np.arcsin(np.clip(n[:, 2], -1.0, 1.0))
    parity = (np.floor(longitude / (np.pi / 4)) + np.floor(latitude / (np.pi / 6))) % 2
    return self.colours[parity.astype(np.int64)] * _lambert(n)


def _yaw_matrix(yaw: float) -> np.ndarray:
  c, s = np.cos(yaw), np.sin(yaw)
  return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


@dataclasses.dataclass
class Box:
  """A box rotated by ``yaw`` about z, with a 3D checker of two colours in its own frame."""
  centre: np.ndarray
  half: np.ndarray  # [3] half extents
  yaw: float
  colours: np.ndarray  # [2, 3]

  def _to_local(self, origin, dirs):
    rot_t = _yaw_matrix(self.yaw).T  # world -> box
    return rot_t @ (origin - self.centre), dirs @ rot_t.T

  def intersect(self, origin, dirs):
    o, d = self._to_local(origin, dirs)
    safe = np.where(np.abs(d) > _EPS, d, _EPS)
    t1, t2 = (-self.half - o) / safe, (self.half - o) / safe
    lo, hi = np.minimum(t1, t2), np.maximum(t1, t2)
    # Column-wise max/min: much faster than reducing over a length-3 axis.
    near = np.maximum(np.maximum(lo[:, 0], lo[:, 1]), lo[:, 2])
    far = np.minimum(np.minimum(hi[:, 0], hi[:, 1]), hi[:, 2])
    return near, (near <= far) & (near > _EPS)

  def shade(self, points, dirs):
    del dirs
    local = (points - self.centre) @ _yaw_matrix(self.yaw)  # row vectors: R^T p
    cell = np.min(self.half) / 1.5
    parity = np.sum(np.floor(local / cell + 1e-6), axis=1) % 2
    scaled = np.abs(local / self.half)
    axis = np.argmax(scaled, axis=1)
    normal_local = np.zeros_like(local)
    normal_local[np.arange(len(axis)), axis] = np.sign(local[np.arange(len(axis)), axis])
    normal = normal_local @ _yaw_matrix(self.yaw).T
    return self.colours[parity.astype(np.int64)] * _lambert(normal)


def render(primitives, origin: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Nearest hit per ray: colours [N, 3] in [0, 1] and the hit parameter t [N] (z-depth).

  Rays that hit nothing (impossible inside a :class:`Dome`) get colour 0 and depth inf.
  """
  n = dirs.shape[0]
  best_t = np.full(n, np.inf)
  best_id = np.full(n, -1)
  for index, primitive in enumerate(primitives):
    t, valid = primitive.intersect(origin, dirs)
    closer = valid & (t < best_t)
    best_t = np.where(closer, t, best_t)
    best_id = np.where(closer, index, best_id)
  colour = np.zeros((n, 3))
  for index, primitive in enumerate(primitives):
    sel = np.nonzero(best_id == index)[0]
    if sel.size:
      points = origin + best_t[sel, None] * dirs[sel]
      colour[sel] = primitive.shade(points, dirs[sel])
  return np.clip(colour, 0.0, 1.0), best_t
