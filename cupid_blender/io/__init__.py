"""The add-on's pure-Python rooms: nothing here imports bpy (stdlib and numpy only).

As in Blender's glTF add-on (``io`` beside the bpy code), what can be decided without Blender lives
here and is testable on its own: the reconstruction job and its HTTP worker (:mod:`.job`), what to
upload for a photo and mask (:mod:`.upload`, with the pixel work in :mod:`.imaging` and EXIF
orientation in :mod:`.orientation`), the result-bundle reader (:mod:`.bundle`) and its Gaussians
(:mod:`.gaussians`), the camera math (:mod:`.camera`) and the decisions taken from the artist's
settings (:mod:`.settings`). The modules at the package's top level are the rooms that touch bpy;
they import from here, never the other way round. (``client`` and ``backend_manager`` are bpy-free too.)
"""
