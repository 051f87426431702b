"""An example jobq task package: thumbnails of images (JOBQ_TASK_MODULES=thumbnailer.tasks)."""
