"""The add-on's pure-Python rooms: nothing here imports bpy (stdlib and numpy only).

As in Blender's glTF add-on (``io`` beside ``blender``), what can be decided without Blender lives
here and is testable on its own: the reconstruction job and its HTTP worker (:mod:`.job`), the
result-bundle reader (:mod:`.bundle`), the camera math (:mod:`.camera`), pixel work for uploads
(:mod:`.imaging`). The modules at the package's top level are the rooms that touch bpy; they import
from here, never the other way round. (``client`` and ``backend_manager`` are bpy-free too.)
"""
