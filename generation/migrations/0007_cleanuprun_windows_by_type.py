# The windows a run used, per content type (GENERATION_STUCK_AFTER=3h,video=8h): the defaults stay in the
# duration columns, each content type's own window goes here in seconds. Older runs had none: {}.

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('generation', '0006_cleanuprun_kind'),
    ]

    operations = [
        migrations.AddField(
            model_name='cleanuprun',
            name='windows_by_type',
            field=models.JSONField(blank=True, db_default={}, default=dict),
        ),
    ]
