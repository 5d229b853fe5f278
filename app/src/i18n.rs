//! The page's languages: English and Simplified Chinese. Every UI string goes through [`t`] with its English
//! text as the key; the Chinese is looked up in [`ZH`]. The language follows the browser (the server renders
//! the page in the language of `Accept-Language`, or of the `cogvlm_lang` cookie the switch sets, and writes it
//! into `<html lang>`, where the hydrating page reads it, so both render the same text).
//!
//! Task templates keep their English prompts (the models were trained on them); only their labels are here.

use leptos::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    En,
    Zh,
}

/// The cookie the language switch sets.
pub const COOKIE: &str = "cogvlm_lang";

impl Lang {
    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Zh => "zh-CN",
        }
    }

    /// From a cookie value or an `<html lang>` code.
    pub fn from_code(code: &str) -> Option<Lang> {
        let c = code.trim().to_ascii_lowercase();
        if c.starts_with("zh") {
            Some(Lang::Zh)
        } else if c.starts_with("en") {
            Some(Lang::En)
        } else {
            None
        }
    }

    /// The first language of an `Accept-Language` header this page has (by order, ignoring weights of 0).
    pub fn from_accept_language(header: &str) -> Lang {
        let mut langs: Vec<(f32, Lang)> = header
            .split(',')
            .filter_map(|part| {
                let mut it = part.split(';');
                let lang = Lang::from_code(it.next()?)?;
                let q = it
                    .find_map(|p| p.trim().strip_prefix("q=")?.parse::<f32>().ok())
                    .unwrap_or(1.0);
                (q > 0.0).then_some((q, lang))
            })
            .collect();
        // Stable: equal weights keep the header's order.
        langs.sort_by(|a, b| b.0.total_cmp(&a.0));
        langs.first().map_or(Lang::En, |l| l.1)
    }
}

/// The language the page starts in: on the server the `cogvlm_lang` cookie, else `Accept-Language`; in the
/// browser the `<html lang>` the server wrote.
pub fn initial() -> Lang {
    #[cfg(feature = "ssr")]
    {
        use_context::<axum::http::request::Parts>()
            .map(|parts| {
                parts
                    .headers
                    .get_all(axum::http::header::COOKIE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .find_map(|v| protocol::cookie_value(v, COOKIE))
                    .and_then(Lang::from_code)
                    .unwrap_or_else(|| {
                        let header = parts
                            .headers
                            .get(axum::http::header::ACCEPT_LANGUAGE)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("");
                        Lang::from_accept_language(header)
                    })
            })
            .unwrap_or(Lang::En)
    }
    #[cfg(not(feature = "ssr"))]
    {
        web_sys::window()
            .and_then(|w| w.document())
            .and_then(|d| d.document_element())
            .and_then(|e| e.get_attribute("lang"))
            .and_then(|l| Lang::from_code(&l))
            .unwrap_or(Lang::En)
    }
}

/// The language switch: the page follows at once, and the cookie makes the server render it so next time.
pub fn switch(page_lang: RwSignal<Lang>, lang: Lang) {
    page_lang.set(lang);
    let Some(doc) = web_sys::window().and_then(|w| w.document()) else {
        return;
    };
    if let Some(root) = doc.document_element() {
        let _ = root.set_attribute("lang", lang.code());
    }
    if let Ok(html) = wasm_bindgen::JsCast::dyn_into::<web_sys::HtmlDocument>(doc) {
        let _ = html.set_cookie(&format!(
            "{COOKIE}={}; path=/; max-age=31536000; SameSite=Lax",
            lang.code()
        ));
    }
}

/// `en` translated into the page's language (tracked: a view using it follows the switch).
pub fn t(lang: RwSignal<Lang>, en: &'static str) -> &'static str {
    tr(lang.get(), en)
}

/// As [`t`], for a known language.
pub fn tr(lang: Lang, en: &'static str) -> &'static str {
    match lang {
        Lang::En => en,
        Lang::Zh => ZH.iter().find(|(k, _)| *k == en).map_or(en, |(_, zh)| *zh),
    }
}

/// English → 简体中文.
pub const ZH: &[(&str, &str)] = &[
    ("New conversation", "新对话"),
    ("This conversation was with", "此对话使用的是"),
    ("the loaded checkpoint is", "当前加载的模型是"),
    ("(Hugging Face) into a folder of checkpoints and start", "（Hugging Face）下载到一个模型文件夹，然后运行"),
    ("(add --device cuda on a GPU build); see the README.", "（GPU 版本加上 --device cuda）；详见 README。"),
    ("(default for this model)", "（此模型的默认值）"),
    ("(thousandths of the width and height) in a question or an answer are drawn on the image.", "（宽和高的千分之一）会在图像上画出，无论出现在问题还是回答中。"),
    (", which is not in the models folder: the loaded checkpoint may not follow the template.", "，但它不在模型文件夹中：当前模型可能不会遵循此模板。"),
    ("A new image starts a new conversation.", "换一张图像会开始新的对话。"),
    ("Add an image (button, drag and drop, or paste), then ask a question.", "添加一张图像（按钮、拖放或粘贴），然后提问。"),
    ("Another", "换一个"),
    ("Another random template", "随机换一个模板"),
    ("Anyone on your network with this link can use this server.", "你所在网络中任何拿到此链接的人都能使用这台服务器。"),
    ("Ask a question…  (Enter sends, Shift+Enter: new line, Esc: stop)", "提个问题…（Enter 发送，Shift+Enter 换行，Esc 停止）"),
    ("Ask about an image", "就图像提问"),
    ("Boxes written as", "写成"),
    ("Cancel", "取消"),
    ("Choose an image", "选择图像"),
    ("Clear", "清空"),
    ("Close", "关闭"),
    ("Context", "上下文"),
    ("Conversations", "对话"),
    ("Copy", "复制"),
    ("Copy boxes (JSON)", "复制框（JSON）"),
    ("Copied", "已复制"),
    ("Could not copy", "无法复制"),
    ("Could not load", "无法加载"),
    ("Could not make the annotated image", "无法生成标注图像"),
    ("Could not read", "无法读取"),
    ("Could not show", "无法显示"),
    ("Delete", "删除"),
    ("Dismiss", "关闭提示"),
    ("Download annotated", "下载标注图"),
    ("Drag on the image to mark a region for the prompt.", "在图像上拖动，为提示词标出一个区域。"),
    ("Drag on the image to mark one or more regions.", "在图像上拖动，标出一个或多个区域。"),
    ("Drag to mark a region for the prompt", "拖动以为提示词标出区域"),
    ("Drop an image here, paste it (Ctrl+V), or", "把图像拖到这里、粘贴（Ctrl+V），或"),
    ("Each checkpoint is a folder with config.json and *.safetensors.", "每个模型是一个包含 config.json 和 *.safetensors 的文件夹。"),
    ("Edit", "编辑"),
    ("Generate", "生成"),
    ("Grounded operation", "定位操作"),
    ("Kept in this browser only.", "只保存在此浏览器中。"),
    ("Loading", "正在加载"),
    ("Max new tokens", "最多新词元"),
    ("Model", "模型"),
    ("More", "更多"),
    ("New", "新建"),
    ("Next action", "下一步"),
    ("No checkpoint found in", "未找到模型："),
    ("PNG with the boxes and labels", "带框和标签的 PNG"),
    ("Plan", "计划"),
    ("Prompt template", "提示词模板"),
    ("Random template", "随机模板"),
    ("Raw answer", "原始回答"),
    ("Regenerate", "重新生成"),
    ("Remove", "移除"),
    ("Remove region", "移除区域"),
    ("Remove this region from the prompt", "从提示词中移除此区域"),
    ("Rename", "重命名"),
    ("Replace", "替换"),
    ("Retry", "重试"),
    ("Seed", "随机种子"),
    ("Send", "发送"),
    ("Settings", "设置"),
    ("Share", "分享"),
    ("Stop", "停止"),
    ("Switch to", "切换到"),
    ("Target", "目标"),
    ("Task", "任务"),
    ("Template", "模板"),
    ("Test checkpoint: the answers are not meaningful.", "测试模型：回答没有意义。"),
    ("The loaded checkpoint,", "当前加载的模型"),
    ("The model loaded now is a tiny checkpoint with the real CogVLM / CogAgent architecture and tokenizer but random weights (from", "当前加载的是一个微型模型，结构和分词器与真实的 CogVLM / CogAgent 相同，但权重是随机的（来自"),
    ("The previous model is still loaded.", "之前的模型仍在使用。"),
    ("This task suits THUDM's", "此任务适合智谱的"),
    ("Where", "位置"),
    ("Without an image the model answers from text alone.", "没有图像时，模型只根据文字回答。"),
    ("You", "你"),
    ("bundled so that the app works out of the box. It produces gibberish by design. For real answers, download THUDM's", "随程序附带，让应用开箱即用；它的输出本就是乱码。要得到真正的回答，请下载智谱的"),
    ("bundled test model", "附带的测试模型"),
    ("Demo checkpoint: a tiny CogVLM trained here on synthetic scenes.", "演示检查点：在本机用合成场景训练的小型 CogVLM。"),
    ("It knows pictures of one to three coloured circles, squares and triangles on a plain background. Ask it", "它认识纯色背景上的一到三个彩色圆形、正方形和三角形。可以问它"),
    ("(it answers with a box, drawn over the image; cogvlm-demo-boxes lands it on the named shape about nine times in ten, cogvlm-demo one time in four) or", "（它用方框回答，方框画在图上；cogvlm-demo-boxes 约十次中有九次框中所问的图形，cogvlm-demo 约四次中有一次）或"),
    ("; make such pictures with", "；这样的图片可以用下面的命令生成："),
    (". About anything else its answers mean nothing. For real answers, put THUDM's", "。对其他图片，它的回答没有意义。要得到真正的回答，请把智谱的"),
    ("device", "设备"),
    ("devices", "设备"),
    ("earlier turns left out of the prompt to fit the context", "轮较早的对话未放入提示词，以适应上下文长度"),
    ("is in the models folder.", "在模型文件夹中。"),
    ("is not an image", "不是图像"),
    ("local vision-language chat", "本地视觉语言对话"),
    ("no limit", "不限"),
    ("positions of the checkpoint's context (image, question and answers)", "个位置已被使用，占模型上下文（图像、问题和回答）"),
    ("random", "随机"),
    ("suits this task.", "适合此任务。"),
    ("this server accepts images up to", "此服务器接受的图像最大为"),
    ("unknown type", "未知类型"),
    ("with grounding", "带定位"),
    ("0 (greedy)", "0（贪心）"),
    ("0 = greedy (always the most likely token)", "0 = 贪心（总是选最可能的词元）"),
    ("1 = greedy", "1 = 贪心"),
    ("0 = no top-k, 1 = greedy", "0 = 不截断候选词，1 = 贪心"),
    ("0 (off)", "0（关闭）"),
    ("Max length", "最大长度"),
    ("Repetition penalty", "重复惩罚"),
    ("Temperature", "温度"),
    ("Top k", "Top k"),
    ("Top p", "Top p"),
    ("prompt, image tokens and answer together", "提示词、图像词元和回答的总长度"),
    ("prompt tokens", "个提示词元"),
    ("cached", "个来自缓存"),
    ("new", "个新词元"),
    ("prefill", "预填充"),
    ("first token", "首个词元"),
    ("end of answer", "回答结束"),
    ("length limit", "达到长度上限"),
    ("stopped", "已停止"),
    ("next in the queue…", "下一个就轮到你…"),
    ("queued", "排队中"),
    ("ahead", "个在前面"),
    ("about", "约"),
    ("reading the image and the prompt…", "正在读取图像和提示词…"),
    ("generating…", "正在生成…"),
    ("recorded answer (test hook)", "录制的回答（测试钩子）"),
    ("error", "错误"),
    ("the object to find, e.g. the red cup", "要找的物体，例如 the red cup"),
    ("the task, e.g. Search for CogVLM", "任务，例如 Search for CogVLM"),
    ("Chat", "对话"),
    ("Describe with boxes", "带框描述"),
    ("Find an object", "查找物体"),
    ("Describe a region", "描述区域"),
    ("GUI agent", "GUI 智能体"),
    ("Action", "操作"),
    ("Text", "文字"),
    ("New image: a new conversation started (the model sees one image per conversation).", "新图像：已开始新的对话（模型每个对话只看一张图像）。"),
    ("chat: Question: … Answer:", "chat：Question: … Answer:"),
    ("chat_old: chat with the older template", "chat_old：旧版对话模板"),
    ("base: plain continuation, no template", "base：直接续写，无模板"),
    ("vqa: short answers (Question … Short answer:)", "vqa：简短回答（Question … Short answer:）"),
    ("It changed in another tab at the same moment: nothing was changed, try again.", "它同时在另一个标签页中被修改：未做任何更改，请重试。"),
    ("Could not save the conversation, even after retrying:", "重试后仍无法保存对话："),
    ("It is still on this page: free some disk space, or export it.", "对话仍在此页面上：请释放一些磁盘空间，或将其导出。"),
    ("This conversation changed in another tab: its turns were reloaded here.", "此对话已在另一个标签页中更改：已在此处重新载入其内容。"),
    ("Could not save the conversation:", "无法保存对话："),
    ("It is still on this page: export it to keep it.", "对话仍在此页面上：请将其导出以便保留。"),
    ("copy", "副本"),
    ("This conversation changed in another tab. This tab's turns were saved as a new conversation:", "此对话已在另一个标签页中更改。此标签页的内容已另存为新对话："),
    ("This conversation was deleted in another tab: it is saved again if you go on with it here.", "此对话已在另一个标签页中删除：如果在此继续，它会被重新保存。"),
    ("Conversations are not kept:", "对话不会被保存："),
    (crate::conversation::notices::BLOCKED, "请关闭此页面的其他标签页：其中一个以旧版本打开着已保存的对话，此标签页正在等待它释放。"),
    (crate::conversation::notices::REPLACED, "另一个标签页已将保存的对话升级到新版本：请重新加载此页面以继续保存。"),
    ("That conversation is gone.", "该对话已不存在。"),
    ("Could not read the stored conversation", "无法读取已保存的对话"),
    ("It is kept as stored.", "它按原样保留。"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_language_picks_the_first_known() {
        assert_eq!(
            Lang::from_accept_language("zh-CN,zh;q=0.9,en;q=0.8"),
            Lang::Zh
        );
        assert_eq!(
            Lang::from_accept_language("en-US,en;q=0.9,zh;q=0.8"),
            Lang::En
        );
        assert_eq!(Lang::from_accept_language("fr-FR,zh;q=0.5"), Lang::Zh);
        assert_eq!(Lang::from_accept_language("de"), Lang::En);
        assert_eq!(
            Lang::from_accept_language("en;q=0.1, zh-TW;q=0.7"),
            Lang::Zh
        );
    }

    #[test]
    fn every_key_is_translated_once() {
        let mut keys: Vec<&str> = ZH.iter().map(|(k, _)| *k).collect();
        keys.sort_unstable();
        let n = keys.len();
        keys.dedup();
        assert_eq!(keys.len(), n, "a key is listed twice");
        assert!(ZH.iter().all(|(_, zh)| !zh.is_empty()));
        assert_eq!(tr(Lang::Zh, "New conversation"), "新对话");
        assert_eq!(tr(Lang::En, "New conversation"), "New conversation");
    }
}
