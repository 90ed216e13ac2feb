"""Render the example photos shipped with the repo (an RGBA object photo and a 3-object scene with labels)."""
import bpy, math, numpy as np, sys
from mathutils import Vector

def reset():
    bpy.ops.wm.read_factory_settings(use_empty=True)
    sc = bpy.context.scene
    sc.render.engine = 'CYCLES'; sc.cycles.device = 'CPU'; sc.cycles.samples = 32
    sc.render.film_transparent = True
    sc.render.image_settings.file_format = 'PNG'; sc.render.image_settings.color_mode = 'RGBA'
    w = bpy.data.worlds.new("W"); w.use_nodes = True
    w.node_tree.nodes["Background"].inputs[1].default_value = 0.6
    sc.world = w
    return sc

def mat(name, rgb):
    m = bpy.data.materials.new(name); m.use_nodes = True
    b = m.node_tree.nodes["Principled BSDF"]; b.inputs["Base Color"].default_value = (*rgb, 1); b.inputs["Roughness"].default_value = 0.5
    return m

def cam_light(sc, loc, target, lens=40):
    cd = bpy.data.cameras.new("C"); cd.lens = lens
    co = bpy.data.objects.new("C", cd); sc.collection.objects.link(co); sc.camera = co
    co.location = loc
    co.rotation_euler = (Vector(target) - Vector(loc)).to_track_quat('-Z', 'Y').to_euler()
    ld = bpy.data.lights.new("L", 'SUN'); ld.energy = 3.0
    lo = bpy.data.objects.new("L", ld); sc.collection.objects.link(lo); lo.rotation_euler = (0.6, 0.2, 0.8)

out = sys.argv[sys.argv.index("--") + 1]
sc = reset()
bpy.ops.mesh.primitive_monkey_add(size=0.8); o = bpy.context.object
o.rotation_euler = (0, 0, math.radians(-25))
m = o.modifiers.new("s", 'SUBSURF'); m.levels = 2; m.render_levels = 2
bpy.ops.object.shade_smooth(); o.data.materials.append(mat("M", (0.8, 0.35, 0.1)))
cam_light(sc, (1.2, -2.6, 1.1), (0, 0, 0.0), lens=50)
sc.render.resolution_x, sc.render.resolution_y = 480, 360
sc.render.filepath = out + "/monkey.png"; bpy.ops.render.render(write_still=True)

sc = reset()
specs = [("cube", (-0.55, 0.1, 0.25), (0.2, 0.45, 0.85)), ("sphere", (0.5, 0.3, 0.3), (0.85, 0.75, 0.2)), ("cone", (0.0, -0.5, 0.3), (0.3, 0.7, 0.3))]
for i, (kind, loc, rgb) in enumerate(specs):
    if kind == "cube": bpy.ops.mesh.primitive_cube_add(size=0.5, location=loc)
    elif kind == "sphere": bpy.ops.mesh.primitive_uv_sphere_add(radius=0.3, location=loc); bpy.ops.object.shade_smooth()
    else: bpy.ops.mesh.primitive_cone_add(radius1=0.3, depth=0.6, location=loc)
    ob = bpy.context.object; ob.data.materials.append(mat(kind, rgb)); ob.pass_index = i + 1
bpy.ops.mesh.primitive_plane_add(size=6, location=(0, 0, 0.0)); bpy.context.object.data.materials.append(mat("floor", (0.7, 0.7, 0.7)))
sc.render.film_transparent = False
cam_light(sc, (0.3, -3.0, 1.8), (0, 0, 0.2), lens=40)
sc.render.resolution_x, sc.render.resolution_y = 512, 384
vl = sc.view_layers[0]; vl.use_pass_object_index = True
sc.use_nodes = True
nt = sc.node_tree; rl = nt.nodes["Render Layers"]
fo = nt.nodes.new("CompositorNodeOutputFile"); fo.base_path = out + "/_idx"; fo.format.file_format = 'OPEN_EXR'
nt.links.new(rl.outputs["IndexOB"], fo.inputs[0])
sc.render.image_settings.color_mode = 'RGB'
sc.render.filepath = out + "/scene.png"; bpy.ops.render.render(write_still=True)
