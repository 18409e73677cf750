"""minidl's built-in datasets and transforms, registered as a plugin."""
import minidl
from minidl import data
from minidl.data.packed import packed_dataset


@minidl.hookimpl
def minidl_register_datasets(register):
    register("fashion-mnist", data.fashion_mnist, aliases=("fashion_mnist",))
    register("mnist", data.mnist)
    register("npz", data.npz_dataset)
    register("image_folder", data.ImageFolder, aliases=("imagefolder",))
    register("packed", packed_dataset, aliases=("mdlpack",))


@minidl.hookimpl
def minidl_register_transforms(register):
    register("random_crop", data.RandomCrop)
    register("center_crop", data.CenterCrop)
    register("ten_crop", data.TenCrop)
    register("resize", data.Resize)
    register("hflip", data.HorizontalFlip, aliases=("horizontal_flip",))
    register("pca_noise", data.PCAColorNoise, aliases=("pca_color_noise",))
    register("normalize", data.Normalize)
    register("mean_image", data.MeanImage)
