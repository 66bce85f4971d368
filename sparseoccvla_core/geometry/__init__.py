"""Geometry below the model, the data and the metrics: numpy functions every layer shares.

* :mod:`.camera` - rigid poses (quaternions, 4x4 matrices), pinhole projection, the resize / crop of an image and
  its intrinsics.
* :mod:`.ego_motion` - ego state, future waypoints and the driving command from a scene's key-frame ego poses; the
  planner's kinematic anchor fan.
* :mod:`.ego_box` - the ego footprint along a path (headings from the path tangent) and oriented-box overlap.
"""
